"""Errors raised while training that the command line reports without a traceback."""


class NonFiniteError(RuntimeError):
    """A loss or gap statistic became NaN/inf; the message says where (task, epoch, step)."""

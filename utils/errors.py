"""Errors raised while training that the command line reports without a traceback, and
the one-line message of any error."""


class NonFiniteError(RuntimeError):
    """A loss or gap statistic became NaN/inf; the message says where (task, epoch, step)."""


def checked_step(optimizer, loss, where: str) -> None:
    """One optimizer step on ``loss``, refused with :class:`NonFiniteError` (naming
    ``where``: task, epoch, step) when the loss is NaN or infinite."""
    import torch

    if not torch.isfinite(loss):
        raise NonFiniteError(f"non-finite loss {loss.item()} in {where}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def user_message(e: BaseException) -> str:
    """The error's own words on one line. An error raised in a DataLoader worker comes
    back with the worker's traceback inside its message; keep only its last line, minus
    the type name. An OS error gives its path and reason."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    text = str(e).strip() or type(e).__name__
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text

"""Continual learners (one file each), PyCIL style."""

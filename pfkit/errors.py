"""Errors the ``pfkit`` command prints as one line (exit code 2, no traceback)."""


class UserError(RuntimeError):
    """Bad input from the user: what was wrong and how to fix it, printed as one line, no traceback."""

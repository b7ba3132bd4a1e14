"""The project's own input errors: bad input from the user, which the commands print as one line (exit 2)."""


class InputError(ValueError):
    """Bad input: a wrong path, value, file or config key, named in one line. Anything else is a bug in ratlit and
    keeps its traceback. A ``ValueError`` so that callers catching bad values keep catching it."""

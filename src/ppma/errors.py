"""The project's own error type: a user-facing problem the CLI reports in one line."""


class PPMAError(Exception):
    """A problem with the user's input or files (not a bug): the CLI prints it without a traceback."""

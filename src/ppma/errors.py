"""The project's own error type: a user-facing problem the CLI reports in one line."""


class PPMAError(Exception):
    """A problem with the user's input or files (not a bug): the CLI prints it without a traceback."""


def one_line(text: str) -> str:
    """A multi-line message (torch's ``load_state_dict`` errors, ...) joined into one line."""
    return " ".join(line.strip() for line in text.strip().splitlines())

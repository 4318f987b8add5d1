"""The one error type a user can cause: the CLI prints it as a single line and exits with code 2."""


class DiffkitError(Exception):
    """A problem with the user's input or files, with the fix in the message."""

    quiet = False  # True: already printed elsewhere (by rank 0 of a multi-process run); exit 2 silently

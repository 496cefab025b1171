"""Errors a user can act on. The CLI prints them as one line `error: ...` without a traceback."""


class HangptError(Exception):
    """Something went wrong that is not a bug in hangpt (exit code 1)."""

    exit_code = 1


class InputError(HangptError):
    """Bad input: a missing or malformed file, field or flag (exit code 2). Name the file/line/field."""

    exit_code = 2


class Interrupted(HangptError):
    """Ctrl-C stopped a run as asked: a calm message, not an error, and exit status 130 (as shells
    report an interrupt)."""

    exit_code = 130

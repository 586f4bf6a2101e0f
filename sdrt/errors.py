"""Errors a user can fix. The CLI prints them as one line and exits with code 2, never a traceback."""


class UserError(Exception):
    """Bad input or environment: the message names the problem and the fix in one line."""

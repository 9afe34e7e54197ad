"""The one exception type users see: a message that says what is wrong and what to change."""


class UserError(Exception):
    """Bad input or configuration. The CLI prints the message alone (no traceback) and exits with status 2."""

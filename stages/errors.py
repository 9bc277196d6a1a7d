"""The error every stage reports as one line instead of a traceback."""


class DeepGuardError(Exception):
    """An expected failure with a message a user can act on (bad input, missing credentials, ...)."""

"""The one error type the command line turns into a single line and a non-zero exit."""


class ImgsearchError(Exception):
    """A problem the user can act on; the message is shown as it is."""

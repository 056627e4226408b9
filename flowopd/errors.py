"""User-facing errors: the CLI prints them as one line (no traceback unless ``--debug``)."""


class FlowOPDError(Exception):
    """An error whose message says what went wrong and how to fix it."""


class ConfigError(FlowOPDError, ValueError):
    """A bad configuration key or value."""


class InputError(FlowOPDError, ValueError):
    """A bad input file (prompt file, image, metadata)."""

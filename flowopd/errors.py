"""User-facing errors: the CLI prints them as one line (no traceback unless ``--debug``)."""

import contextlib
from collections.abc import Iterator


class FlowOPDError(Exception):
    """An error whose message says what went wrong and how to fix it."""


class PluginWarning(UserWarning):
    """A plugin that could not be registered as declared (its reward name is taken)."""


class RunWarning(UserWarning):
    """Something about a run's settings worth saying before it starts (it runs anyway)."""


class ConfigError(FlowOPDError, ValueError):
    """A bad configuration key or value."""


class InputError(FlowOPDError, ValueError):
    """A bad input file (prompt file, image, metadata)."""


def is_corrupt_safetensors(exc: BaseException) -> bool:
    """Whether ``exc`` is safetensors refusing a truncated or corrupt file (raised directly or through diffusers)."""
    text = str(exc)
    return (
        type(exc).__name__ == "SafetensorError" or "while deserializing header" in text or "Unable to load weights from checkpoint" in text
    )


def corrupt_weights_error(file: object, exc: BaseException) -> FlowOPDError:
    """One line naming the unreadable weights file and the fix."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return FlowOPDError(f"{file} is truncated or corrupt ({first}); copy it again or rerun the command that wrote it")


@contextlib.contextmanager
def naming_corrupt_weights(file: object) -> Iterator[None]:
    """Inside it, safetensors refusing a truncated or corrupt file becomes one line naming ``file`` and the fix."""
    try:
        yield
    except Exception as exc:
        if is_corrupt_safetensors(exc):
            raise corrupt_weights_error(file, exc) from None
        raise

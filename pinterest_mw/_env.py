"""Reading the package's environment variables, shared by every entry point."""

from __future__ import annotations

import os
from typing import Final

from .exceptions import ConfigurationError

__all__ = ["env_flag"]

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"", "0", "false", "no", "off"})


def env_flag(name: str) -> bool:
    """Read a yes/no variable; unset or empty means no.

    Raises `ConfigurationError` naming the variable (never its value) for
    anything but 1/true/yes/on or 0/false/no/off, in any case.
    """
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(
        f"{name} must be one of 1, true, yes, on, 0, false, no, off"
    )

"""Field paths that are safe to show: our names kept, anything else hidden.

An error path such as `user_data.<key>` names a key the caller chose, and a
caller's key may itself be personal data (`{email: email}` is a common
slip). Log lines, exception messages and CLI output show a path only
through `safe_path`, which keeps the names this package defines and list
indexes, and hides every other part.
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel

from .events import AppInfo, ContentItem, CustomData, DeviceInfo, Event, UserData
from .hashing import USER_DATA_KEYS

__all__ = ["KNOWN_FIELD_NAMES", "UNKNOWN_KEY", "safe_path"]


def _field_names(*models: type[BaseModel]) -> set[str]:
    """The names of the models' fields, and their aliases (wire codes)."""
    return {
        name
        for model in models
        for field_name, info in model.model_fields.items()
        for name in (field_name, info.alias)
        if name
    }


KNOWN_FIELD_NAMES: Final = frozenset(
    {
        "data",
        *USER_DATA_KEYS,
        *_field_names(Event, UserData, CustomData, ContentItem, AppInfo, DeviceInfo),
    }
)
"""Every name a field path of ours may hold: event fields and their parts,
and `data`, the list a batch's paths start with."""

UNKNOWN_KEY: Final = "<unknown key>"
"""What a hidden part of a path shows instead."""


def safe_path(path: str) -> str:
    """`path` with every part that is not one of our names hidden.

    A caller's key may hold dots (an email does): the parts it splits into
    are hidden behind one `<unknown key>`.
    """
    parts = path.split(".")
    if all(_is_known(part) for part in parts):
        return path
    shown: list[str] = []
    for part in parts:
        if _is_known(part):
            shown.append(part)
        elif not shown or shown[-1] != UNKNOWN_KEY:
            shown.append(UNKNOWN_KEY)

    return ".".join(shown)


def _is_known(part: str) -> bool:
    return not part or part in KNOWN_FIELD_NAMES or part.isdigit()

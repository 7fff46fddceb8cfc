"""Reading loose JSON values: the one place that decides what a missing or bad value becomes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from vmscan.model import ImageStatus, Severity


def read_str(value: Any, default: str = "") -> str:
    """Text as it is; *default* for null; other values as their text."""
    if value is None:
        return default
    return value if isinstance(value, str) else str(value)


def opt_str(value: Any) -> str | None:
    """Text, or None for null."""
    return None if value is None else read_str(value)


def read_int(value: Any, default: int = 0) -> int:
    """An integer (a whole float too); *default* for anything else."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return default


def opt_int(value: Any) -> int | None:
    """An integer, or None for null."""
    return None if value is None else read_int(value)


def truthy_str(value: Any) -> str:
    """Text of a value that is set; '' for null, false, 0 or empty."""
    return read_str(value) if value else ""


def read_map(value: Any) -> dict[str, Any]:
    """A shallow copy of an object; {} for anything else."""
    return dict(value) if isinstance(value, Mapping) else {}


def read_maps(value: Any) -> list[Mapping[str, Any]]:
    """The objects of a list (other items dropped); [] for anything else."""
    if not isinstance(value, list | tuple):
        return []
    return [v for v in value if isinstance(v, Mapping)]


def read_strs(value: Any) -> tuple[str, ...]:
    """The items of a list as text (nulls dropped); () for anything else."""
    if not isinstance(value, list | tuple):
        return ()
    return tuple(read_str(v) for v in value if v is not None)


def to_plain(value: Any) -> Any:
    """A value of this module as plain JSON types (dataclasses, tuples, enums)."""
    if isinstance(value, Doc):
        return value.to_json()
    if isinstance(value, Severity | ImageStatus):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


class Doc:
    """Base of the document classes: fields marked ``json=False`` are derived, not written."""

    def to_json(self) -> dict[str, Any]:
        """This part of the document as JSON types."""
        return {
            f.name: to_plain(getattr(self, f.name))
            for f in fields(self)  # type: ignore[arg-type]
            if f.metadata.get("json", True)
        }


#: Metadata of a field that :meth:`Doc.to_json` does not write under its own name.
DERIVED = {"json": False}

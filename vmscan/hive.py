"""Windows registry hives, read-only: in the appliance (libguestfs hivex_*) or on the host.

Both classes satisfy :class:`vmscan.guestfs_view.Hive`. Values come back raw as
``(type, bytes)``; :func:`reg_str`, :func:`reg_int` and :func:`reg_multi` decode them.
Hive bytes are hostile: callers walk with depth and count limits (:func:`walk`).
"""

from __future__ import annotations

import contextlib
import logging
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vmscan.errors import ApplianceDiedError, GuestError, GuestReadError
from vmscan.guestcall import as_handle

log = logging.getLogger(__name__)

REG_NONE = 0
REG_SZ = 1
REG_EXPAND_SZ = 2
REG_BINARY = 3
REG_DWORD = 4
REG_DWORD_BIG_ENDIAN = 5
REG_LINK = 6
REG_MULTI_SZ = 7
REG_QWORD = 11

#: A hive file must start with this.
REGF_MAGIC = b"regf"
#: A value larger than this is not decoded (real ones are tiny).
VALUE_LIMIT = 1024 * 1024


class HiveError(GuestReadError):
    """A hive cannot be opened or read (corrupt, missing, or another hive is open)."""


# libguestfs allows one open hive per handle: track which handles have one.
_OPEN_LOCK = threading.Lock()
_OPEN_HANDLES: set[int] = set()


class GuestHive:
    """A hive inside the appliance, through libguestfs' ``hivex_*`` calls.

    Only one hive may be open per handle: opening a second one raises HiveError.
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, g: Any, path: str) -> None:
        self.g = as_handle(g)
        self.path = path
        # Keyed by the raw handle: several wrappers may share one appliance.
        self._key = id(self.g.raw)
        with _OPEN_LOCK:
            if self._key in _OPEN_HANDLES:
                raise HiveError(f"{path}: another hive is already open on this handle")
            _OPEN_HANDLES.add(self._key)
        try:
            self.g.hivex_open(path, write=False)
            self._root = int(self.g.hivex_root())
        except GuestError as e:
            with _OPEN_LOCK:
                _OPEN_HANDLES.discard(self._key)
            with contextlib.suppress(GuestError):
                self.g.hivex_close()
            raise self._error(f"{path}: cannot open hive", e) from e
        self._open = True

    @staticmethod
    def _error(what: str, e: GuestError) -> GuestError | HiveError:
        # A dead appliance is not a damaged hive.
        if isinstance(e, ApplianceDiedError):
            return e
        return HiveError(f"{what}: {e}")

    def __enter__(self) -> GuestHive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def root(self) -> int:
        return self._root

    def child(self, node: int, name: str) -> int | None:
        try:
            h = int(self.g.hivex_node_get_child(node, name))
        except GuestError as e:
            raise self._error(self.path, e) from e
        return h or None

    def children(self, node: int) -> list[tuple[str, int]]:
        try:
            out = []
            for c in self.g.hivex_node_children(node):
                h = int(c["hivex_node_h"])
                out.append((str(self.g.hivex_node_name(h)), h))
            return out
        except GuestError as e:
            raise self._error(self.path, e) from e

    def values(self, node: int) -> dict[str, tuple[int, bytes]]:
        try:
            out: dict[str, tuple[int, bytes]] = {}
            for v in self.g.hivex_node_values(node):
                h = int(v["hivex_value_h"])
                key = str(self.g.hivex_value_key(h))
                typ = int(self.g.hivex_value_type(h))
                data: bytes = self.g.hivex_value_value(h)
                out[key] = (typ, data[:VALUE_LIMIT])
            return out
        except GuestError as e:
            raise self._error(self.path, e) from e

    def close(self) -> None:
        if not getattr(self, "_open", False):
            return
        self._open = False
        try:
            self.g.hivex_close()
        except GuestError as e:
            log.debug("hivex_close: %s", e)
        finally:
            with _OPEN_LOCK:
                _OPEN_HANDLES.discard(self._key)


class HostHive:
    """A hive file on the host, through the ``hivex`` Python module (Debian python3-hivex)."""

    def __init__(self, path: str | Path, label: str | None = None) -> None:
        self.path = Path(path)
        #: How messages name the hive (its guest path when the file is a host copy).
        self.label = label or str(self.path)
        try:
            with open(self.path, "rb") as fh:
                head = fh.read(4)
        except OSError as e:
            raise HiveError(f"{self.label}: {e.strerror}") from e
        if head != REGF_MAGIC:
            raise HiveError(f"{self.label}: not a registry hive (no regf signature)")
        try:
            import hivex
        except ImportError as e:  # pragma: no cover - depends on the host
            raise HiveError("the hivex Python module is missing (apt install python3-hivex)") from e

        class _Hivex(hivex.Hivex):  # type: ignore[misc]
            """hivex.Hivex whose destructor survives a failed open and an explicit close."""

            def close(self) -> None:
                o = self.__dict__.pop("_o", None)
                if o is not None:
                    import libhivexmod

                    libhivexmod.close(o)

            def __del__(self) -> None:
                self.close()

        try:
            self._h: Any = _Hivex(str(self.path))
            self._root = int(self._h.root())
        except RuntimeError as e:
            raise HiveError(f"{self.label}: cannot open hive: {e}") from e

    def __enter__(self) -> HostHive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def root(self) -> int:
        return self._root

    def child(self, node: int, name: str) -> int | None:
        try:
            h = self._h.node_get_child(node, name)
        except RuntimeError as e:
            raise HiveError(f"{self.label}: {e}") from e
        return int(h) if h else None

    def children(self, node: int) -> list[tuple[str, int]]:
        try:
            return [(str(self._h.node_name(c)), int(c)) for c in self._h.node_children(node)]
        except RuntimeError as e:
            raise HiveError(f"{self.label}: {e}") from e

    def values(self, node: int) -> dict[str, tuple[int, bytes]]:
        try:
            out: dict[str, tuple[int, bytes]] = {}
            for v in self._h.node_values(node):
                key = str(self._h.value_key(v))
                typ, data = self._h.value_value(v)
                out[key] = (int(typ), bytes(data[:VALUE_LIMIT]))
            return out
        except RuntimeError as e:
            raise HiveError(f"{self.label}: {e}") from e

    def close(self) -> None:
        h = getattr(self, "_h", None)
        if h is not None:
            h.close()


# ---------------------------------------------------------------------------
# Helpers over any Hive


def lookup(hive: Any, path: str, start: int | None = None) -> int | None:
    """Node at a backslash-separated *path* (case-insensitive, like Windows), or None."""
    node: int | None = hive.root() if start is None else start
    for part in [p for p in path.split("\\") if p]:
        if node is None:
            return None
        node = hive.child(node, part)
    return node


def walk(
    hive: Any, node: int, max_depth: int = 32, max_nodes: int = 200_000
) -> Iterator[tuple[str, int]]:
    """(path, node) below *node*, breadth first, bounded: a corrupt hive may hold cycles."""
    seen = {node}
    queue: list[tuple[str, int, int]] = [("", node, 0)]
    count = 0
    while queue:
        path, n, depth = queue.pop(0)
        if depth >= max_depth:
            continue
        for name, child in hive.children(n):
            if child in seen:
                continue
            seen.add(child)
            count += 1
            if count > max_nodes:
                raise HiveError(f"more than {max_nodes} keys: walk stopped")
            cpath = f"{path}\\{name}" if path else name
            yield cpath, child
            queue.append((cpath, child, depth + 1))


def reg_str(value: tuple[int, bytes] | None) -> str | None:
    """A REG_SZ / REG_EXPAND_SZ (UTF-16LE) value as text; numbers are stringified."""
    if value is None:
        return None
    typ, data = value
    if typ in (REG_SZ, REG_EXPAND_SZ, REG_LINK, REG_NONE, REG_BINARY, REG_MULTI_SZ):
        if typ == REG_MULTI_SZ:
            parts = reg_multi(value)
            return parts[0] if parts else ""
        if len(data) % 2:
            data = data[:-1]
        text = data.decode("utf-16-le", errors="replace")
        return text.split("\0", 1)[0]
    n = reg_int(value)
    return str(n) if n is not None else None


def reg_int(value: tuple[int, bytes] | None) -> int | None:
    """A REG_DWORD / REG_QWORD value (also a numeric REG_SZ) as an int."""
    if value is None:
        return None
    typ, data = value
    if typ == REG_DWORD and len(data) >= 4:
        return int(struct.unpack_from("<I", data)[0])
    if typ == REG_DWORD_BIG_ENDIAN and len(data) >= 4:
        return int(struct.unpack_from(">I", data)[0])
    if typ == REG_QWORD and len(data) >= 8:
        return int(struct.unpack_from("<Q", data)[0])
    if typ in (REG_SZ, REG_EXPAND_SZ):
        s = reg_str(value)
        try:
            return int(s.strip()) if s is not None else None
        except ValueError:
            return None
    return None


def reg_multi(value: tuple[int, bytes] | None) -> list[str]:
    """A REG_MULTI_SZ value as a list of strings."""
    if value is None:
        return []
    _typ, data = value
    if len(data) % 2:
        data = data[:-1]
    return [s for s in data.decode("utf-16-le", errors="replace").split("\0") if s]

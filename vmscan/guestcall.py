"""The one boundary where libguestfs' ``RuntimeError`` becomes vmscan's own exceptions.

libguestfs raises the same ``RuntimeError`` for "no such file" and for "the appliance
died". :class:`GuestHandle` wraps a handle so that every call either returns or raises:

- :class:`~vmscan.errors.GuestNotFoundError` when libguestfs' ``last_errno`` is ENOENT or
  ENOTDIR (the daemon answered: the path is proven absent);
- :class:`~vmscan.errors.ApplianceDiedError` when the daemon no longer answers
  ``ping_daemon`` (or the handle is closed); from then on every call fails at once,
  without a round trip;
- :class:`~vmscan.errors.GuestBackendError` for any other failure.

The Python binding of libguestfs 1.48 has no ``last_errno`` method, so it is read from
the C library with ctypes on the handle's ``guestfs_h`` capsule (``guestfs_last_errno``
is per handle and set by the daemon's reply). Where that is not possible the errno is
taken as 0, so the failure can only be a backend error, never an absence.
"""

from __future__ import annotations

import ctypes
import errno as errnomod
import functools
import logging
from collections.abc import Callable
from typing import Any

from vmscan.errors import ApplianceDiedError, GuestBackendError, GuestError, GuestNotFoundError

log = logging.getLogger(__name__)

#: errno values that prove a path is absent.
ABSENT_ERRNOS = frozenset({errnomod.ENOENT, errnomod.ENOTDIR})


def _first_line(e: BaseException) -> str:
    msg = str(e).strip()
    return msg.splitlines()[0][:500] if msg else type(e).__name__


@functools.cache
def _errno_reader() -> Callable[[Any], int] | None:
    try:
        lib = ctypes.CDLL("libguestfs.so.0")
        last = lib.guestfs_last_errno
        last.argtypes = [ctypes.c_void_p]
        last.restype = ctypes.c_int
        get = ctypes.pythonapi.PyCapsule_GetPointer
        get.argtypes = [ctypes.py_object, ctypes.c_char_p]
        get.restype = ctypes.c_void_p
    except (OSError, AttributeError) as e:  # pragma: no cover - depends on the host
        log.warning("libguestfs errno not readable (%s): no failure will count as absence", e)
        return None

    def read(g: Any) -> int:
        capsule = getattr(g, "_o", None)
        if capsule is None:
            return 0
        try:
            ptr = get(capsule, b"guestfs_h")
        except (ValueError, TypeError):
            return 0
        return int(last(ptr)) if ptr else 0

    return read


def last_errno(g: Any) -> int:
    """libguestfs' errno of the last failed call on the raw handle *g* (0: unknown)."""
    if hasattr(g, "last_errno"):  # newer bindings have it
        return int(g.last_errno())
    reader = _errno_reader()
    return reader(g) if reader is not None else 0


class GuestHandle:
    """A libguestfs handle whose methods raise :class:`~vmscan.errors.GuestError` only.

    Attribute access returns wrapped methods of the raw handle (``raw``); the wrapper
    is transparent for return values.
    """

    def __init__(self, g: Any) -> None:
        self.raw = g
        self.dead: str | None = None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.raw, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.dead is not None:
                raise ApplianceDiedError(f"{name}: the appliance died earlier ({self.dead})")
            try:
                return attr(*args, **kwargs)
            except RuntimeError as e:
                raise self.translate(name, e) from e
            except ValueError as e:  # guestfs.ClosedHandle
                if type(e).__name__ != "ClosedHandle":
                    raise
                self.dead = "handle closed"
                raise ApplianceDiedError(f"{name}: the libguestfs handle is closed") from e

        call.__name__ = name
        return call

    def translate(self, op: str, e: RuntimeError) -> GuestError:
        """The vmscan exception for *e*, raised by the call *op* on this handle."""
        msg = _first_line(e)
        err = last_errno(self.raw)
        if err in ABSENT_ERRNOS:
            return GuestNotFoundError(msg, err)
        if not self.alive():
            self.dead = msg
            return ApplianceDiedError(f"the appliance died: {msg}", err)
        return GuestBackendError(msg, err)

    def alive(self) -> bool:
        """True when the appliance's daemon answers (one short round trip, about 5 ms)."""
        if self.dead is not None:
            return False
        try:
            self.raw.ping_daemon()
        except (RuntimeError, ValueError) as e:
            self.dead = _first_line(e)
            return False
        return True


def as_handle(g: Any) -> GuestHandle:
    """*g* wrapped (or *g* itself when it is already a :class:`GuestHandle`)."""
    return g if isinstance(g, GuestHandle) else GuestHandle(g)

"""vmscan's own exceptions; libguestfs RuntimeError is translated at one boundary.

That boundary is :mod:`vmscan.guestcall` (used by the guest-access modules
``session``, ``guestfs_view``, ``guestindex`` and ``hive``): a libguestfs failure becomes
:class:`GuestNotFoundError` only when libguestfs itself said ENOENT/ENOTDIR, and
:class:`GuestBackendError` otherwise. ``scripts/check_runtime_error.py`` (run by
``make lint``) fails when ``RuntimeError`` is caught anywhere else in ``vmscan/``.
"""


class VmscanError(Exception):
    """Base of all vmscan errors: carries a message meant for a person."""


class UsageError(VmscanError):
    """Bad command line or configuration (exit code 3)."""


class ImageError(VmscanError):
    """An image cannot be opened or scanned (status ``error``, exit code 2)."""


class UnsafeImageError(ImageError):
    """An image was refused for safety (e.g. a backing file outside the allowed folders)."""


class GuestReadError(VmscanError):
    """A file in the guest could not be read."""


class TooLargeError(GuestReadError):
    """A guest file is larger than the limit set for that read."""


class ImageTimeoutError(ImageError):
    """The per-image time limit ran out."""


class GuestError(VmscanError):
    """A libguestfs call failed; ``errno`` is what libguestfs reported (0: none)."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class GuestNotFoundError(GuestError):
    """Proven absence: libguestfs answered ENOENT or ENOTDIR for the path."""


class GuestBackendError(GuestError):
    """A libguestfs failure that is not a proven absence (I/O error, dead appliance...).

    It makes the plugin that met it ``failed`` and its image ``partial``; it is never
    read as "the file is not there".
    """


class ApplianceDiedError(GuestBackendError):
    """The appliance no longer answers (qemu killed, handle closed): nothing more can be read."""

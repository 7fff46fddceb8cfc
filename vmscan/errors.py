"""vmscan's own exceptions; libguestfs RuntimeError is translated at one boundary."""


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

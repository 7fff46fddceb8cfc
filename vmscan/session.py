"""GuestSession: one read-only libguestfs appliance over the disks of one VM.

This is the one place that touches the libguestfs handle's lifecycle and turns a failed
launch into :class:`vmscan.errors.ImageError`. Everything else reaches the appliance
through :attr:`GuestSession.h`, the translating :class:`vmscan.guestcall.GuestHandle`.
"""

from __future__ import annotations

import logging
import os
from types import TracebackType
from typing import Any

from vmscan.errors import GuestError, ImageError
from vmscan.guestcall import GuestHandle
from vmscan.model import DiskRef

log = logging.getLogger(__name__)

ACCEL_CHOICES = ("auto", "kvm", "tcg")


def _clean_error(e: BaseException) -> str:
    msg = str(e).strip()
    # libguestfs errors can be long; keep the first useful line.
    return msg.splitlines()[0] if msg else type(e).__name__


class GuestSession:
    """Context manager owning a launched appliance with every disk added read-only."""

    def __init__(
        self,
        disks: tuple[DiskRef, ...] | list[DiskRef],
        memsize: int | None = None,
        accel: str = "auto",
    ) -> None:
        self.disks = list(disks)
        self.memsize = memsize
        self.accel = accel
        self.g: Any = None
        # The handle every caller uses: libguestfs errors arrive translated.
        self.h: GuestHandle | None = None

    def __enter__(self) -> GuestSession:
        try:
            import guestfs
        except ImportError as e:  # pragma: no cover - depends on the host
            raise ImageError(
                "the libguestfs Python bindings are missing (Debian package python3-guestfs)"
            ) from e
        g = guestfs.GuestFS(python_return_dict=True, close_on_exit=False)
        try:
            if self.accel == "tcg":
                g.set_backend_settings(["force_tcg"])
            elif self.accel == "kvm":
                settings = [s for s in g.get_backend_settings() if s != "force_tcg"]
                g.set_backend_settings(settings)
                if not os.path.exists("/dev/kvm"):
                    raise ImageError("--accel kvm: /dev/kvm does not exist on this host")
            if self.memsize:
                g.set_memsize(int(self.memsize))
            for d in self.disks:
                # readonly=1 and an explicit format, always: qemu must never probe.
                if d.nbd_socket:
                    # A point in time served read-only over NBD (qemu-nbd, libvirt backup).
                    g.add_drive_opts(
                        d.nbd_export,
                        readonly=1,
                        format="raw",
                        protocol="nbd",
                        server=[f"unix:{d.nbd_socket}"],
                    )
                else:
                    g.add_drive_opts(d.path, readonly=1, format=d.format)
            g.launch()
        except ImageError:
            g.close()
            raise
        except RuntimeError as e:
            g.close()
            raise ImageError(f"the appliance could not open the image: {_clean_error(e)}") from e
        self.g = g
        self.h = GuestHandle(g)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.g is not None:
            try:
                self.g.umount_all()
                self.g.shutdown()
            except RuntimeError:
                pass
            self.g.close()
            self.g = None
            self.h = None

    def alive(self) -> bool:
        """True while the appliance answers (see :meth:`GuestHandle.alive`)."""
        return self.h is not None and self.h.alive()

    def restart(self) -> None:
        """A fresh appliance over the same disks (after the old one was killed on a deadline)."""
        if self.g is not None:
            try:
                self.g.close()
            except RuntimeError as e:
                log.debug("close of a killed appliance: %s", e)
            self.g = None
        self.__enter__()

    def mount_ro(self, device: str, mountpoint: str) -> str | None:
        """Mount read-only; None on success, else the error text.

        A dead appliance is no "cannot mount": it raises ApplianceDiedError.
        """
        assert self.h is not None
        try:
            self.h.mount_ro(device, mountpoint)
        except GuestError as e:
            if not self.h.alive():
                raise
            return _clean_error(e)
        return None

    def umount_all(self) -> None:
        assert self.h is not None
        try:
            self.h.umount_all()
        except GuestError as e:
            log.warning("umount_all: %s", e)

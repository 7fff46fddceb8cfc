"""What kind of object a name is, decided with ``lstat``/``stat`` before anything opens it.

Opening a FIFO blocks until a writer appears, a character device such as ``/dev/zero``
never ends, and a symlink may point anywhere: a source must be a regular file or a block
device, and the path scanned is the resolved one (the report shows both).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from vmscan.errors import ImageError
from vmscan.source.headers import describe_mode


@dataclass(frozen=True)
class SourcePath:
    """A source name checked on the host: as given, resolved, and what it is."""

    given: str
    real: str
    block_device: bool = False

    @property
    def via_symlink(self) -> bool:
        """True when the name given is (or passes through) a symlink."""
        return os.path.abspath(self.given) != self.real


def check_source_path(given: str) -> SourcePath:
    """Refuse at once anything that is not a regular file or a block device.

    Raises :class:`ImageError` naming what the object is. Nothing is opened here.
    """
    try:
        lst = os.lstat(given)
    except FileNotFoundError as e:
        raise ImageError(f"{given}: no such file") from e
    except OSError as e:
        raise ImageError(f"{given}: cannot stat: {e.strerror}") from e
    real = os.path.realpath(given)
    try:
        st = os.stat(real)
    except FileNotFoundError as e:
        if stat.S_ISLNK(lst.st_mode):
            raise ImageError(f"{given}: a symlink to {real}, which does not exist") from e
        raise ImageError(f"{given}: no such file") from e
    except OSError as e:
        raise ImageError(f"{given}: cannot stat {real}: {e.strerror}") from e
    where = f" (a symlink to {real})" if real != os.path.abspath(given) else ""
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{given}{where}: is a directory, not a disk image")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise ImageError(
            f"{given}{where}: {describe_mode(st.st_mode)}, not a disk image: refused without "
            f"opening it (vmscan reads regular files and block devices)"
        )
    return SourcePath(given, real, block_device=stat.S_ISBLK(st.st_mode))

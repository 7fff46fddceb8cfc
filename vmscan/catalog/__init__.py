"""Package catalogers: dpkg, rpm, apk and Windows programs (see :data:`ALL_CATALOGERS`)."""

from __future__ import annotations

from vmscan.catalog.apk import ApkCataloger
from vmscan.catalog.dpkg import DpkgCataloger
from vmscan.catalog.rpm import RpmCataloger
from vmscan.catalog.windows import WindowsCataloger
from vmscan.plugins import Cataloger

#: Every OS package cataloger, in the order they run.
ALL_CATALOGERS: tuple[Cataloger, ...] = (
    DpkgCataloger(),
    RpmCataloger(),
    ApkCataloger(),
    WindowsCataloger(),
)

__all__ = ["ALL_CATALOGERS", "ApkCataloger", "DpkgCataloger", "RpmCataloger", "WindowsCataloger"]

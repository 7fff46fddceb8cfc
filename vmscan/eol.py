"""Operating-system end-of-life lookups over the dated table in signatures/eol.json."""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmscan.errors import VmscanError
from vmscan.model import OSInfo

log = logging.getLogger(__name__)


class EolTableError(VmscanError):
    """The end-of-life table is missing or malformed."""


@dataclass(frozen=True)
class EolEntry:
    """One row of the table."""

    os: str
    name: str
    eol: dt.date
    extended: dt.date | None
    version: str = ""
    product: str = ""
    build: int | None = None
    edition: str = ""


@dataclass(frozen=True)
class EolStatus:
    """Where one OS stands on *today*: ``supported``, ``extended`` (only LTS/ESU) or ``eol``."""

    entry: EolEntry
    state: str
    today: dt.date

    @property
    def days_past_eol(self) -> int:
        return (self.today - self.entry.eol).days


def default_table_path() -> Path:
    """``eol.json`` of the signatures folder (see :func:`vmscan.sigdir.signatures_dir`)."""
    from vmscan.sigdir import signatures_dir

    return signatures_dir() / "eol.json"


def _date(v: Any, where: str) -> dt.date:
    if not isinstance(v, str):
        raise EolTableError(f"{where}: not a date")
    try:
        return dt.date.fromisoformat(v)
    except ValueError as e:
        raise EolTableError(f"{where}: {e}") from e


def load_table(path: Path | None = None) -> list[EolEntry]:
    """Rows of the table; EolTableError when it cannot be used."""
    path = path or default_table_path()
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise EolTableError(f"{path}: {e}") from e
    rows = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise EolTableError(f"{path}: no 'entries' array")
    out: list[EolEntry] = []
    for k, row in enumerate(rows):
        where = f"{path}: entries[{k}]"
        if not isinstance(row, dict) or not isinstance(row.get("os"), str):
            raise EolTableError(f"{where}: needs an 'os' string")
        ext = row.get("extended")
        build = row.get("build")
        out.append(
            EolEntry(
                os=row["os"],
                name=str(row.get("name", "")),
                eol=_date(row.get("eol"), where),
                extended=_date(ext, where) if ext else None,
                version=str(row.get("version", "")),
                product=str(row.get("product", "")),
                build=int(build) if isinstance(build, int) else None,
                edition=str(row.get("edition", "")),
            )
        )
    return out


def windows_product(os_info: OSInfo) -> str:
    """Product family name, correcting Windows 11 (which still says 'Windows 10')."""
    name = str(os_info.extra.get("product_name") or os_info.product_name or "").strip()
    name = name.removeprefix("Microsoft ")
    build = _windows_build(os_info)
    if name.startswith("Windows 10") and build is not None and build >= 22000:
        name = "Windows 11" + name[len("Windows 10") :]
    return str(name)


def _windows_build(os_info: OSInfo) -> int | None:
    raw = os_info.extra.get("current_build")
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def lookup(os_info: OSInfo, table: list[EolEntry]) -> EolEntry | None:
    """The table row for one OS, None when the table does not know it."""
    if os_info.type == "windows":
        product = windows_product(os_info)
        build = _windows_build(os_info)
        edition = str(os_info.extra.get("edition_id", ""))
        is_ltsc = "EnterpriseS" in edition or "LTSC" in product
        best: EolEntry | None = None
        for row in table:
            if row.os != "windows" or not row.product or not product.startswith(row.product):
                continue
            if row.build is not None:
                if row.build != build:
                    continue
                if (row.edition == "LTSC") != is_ltsc:
                    continue
            # Prefer the most specific row (with a build) over a product-wide one.
            if best is None or (row.build is not None and best.build is None):
                best = row
        return best
    ident = (os_info.os_release_id or os_info.distro or "").lower()
    aliases = {
        "redhat": "rhel",
        "redhat-based": "rhel",
        "rocky linux": "rocky",
        "opensuse": "opensuse-leap",
        "sles_sap": "sles",
        "alpinelinux": "alpine",  # libguestfs' distro names
    }
    ident = aliases.get(ident, ident)
    version = os_info.version_id or ""
    candidates = [r for r in table if r.os == ident]
    if not candidates:
        return None
    major = version.split(".")[0] if version else str(os_info.major_version or "")
    major_minor = (
        ".".join(version.split(".")[:2])
        if version
        else (f"{os_info.major_version}.{os_info.minor_version}")
    )
    for want in (version, major_minor, major):
        for row in candidates:
            if want and row.version == want:
                return row
    return None


def status(
    os_info: OSInfo, table: list[EolEntry], today: dt.date | None = None
) -> EolStatus | None:
    """Support state of one OS on *today* (default: the current UTC date)."""
    entry = lookup(os_info, table)
    if entry is None:
        return None
    today = today or dt.datetime.now(dt.UTC).date()
    if today <= entry.eol:
        state = "supported"
    elif entry.extended is not None and today <= entry.extended:
        state = "extended"
    else:
        state = "eol"
    return EolStatus(entry, state, today)

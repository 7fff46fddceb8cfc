"""Digests of everything a result depends on: tables by content, plugin versions, clamd, options."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from vmscan import __version__
from vmscan.errors import VmscanError
from vmscan.nightly.config import NightlyConfig

log = logging.getLogger(__name__)


def default_signatures_dir() -> Path:
    """The signatures folder when the config names none (:func:`vmscan.sigdir.signatures_dir`)."""
    from vmscan.sigdir import signatures_dir

    return signatures_dir()


#: Digest components and the check each belongs to. ``patch:windows`` (the cumulative-update
#: table) is a component of its own because only images with a Windows root depend on it.
COMPONENT_CHECK: dict[str, str] = {
    "antivirus": "antivirus",
    # vmscan's SHA-256 hash lists: re-matched against stored hashes, no guest read.
    "antivirus:hashes": "antivirus",
    "patch": "patch",
    "patch:windows": "patch",
    "license": "license",
    "migration": "migration",
}
WINDOWS_ONLY: tuple[str, ...] = ("patch:windows",)
#: Entries of the signatures folder a component claims (everything else is a table no
#: component claims: it goes into every check's digest, so that a new table is never missed).
_CLAIMED = ("clamav", "advisories", "eol.json", "windows-builds.json", "licenses")
#: Files that document data but are never read by a check.
_NOT_DATA = (".md", ".gitignore", ".lock", ".txt")


def _file_digest(path: Path) -> str:
    """sha256 of a (trusted, local) data file; 'absent' or the error when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        return f"error:{exc.strerror or exc}"
    return h.hexdigest()


def _data_tree(folder: Path, exclude: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    if not folder.is_dir():
        return "absent"
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or p.name.endswith(_NOT_DATA) or p.name.startswith("index.sqlite"):
            continue
        if any(rel == e or rel.startswith(e + "/") for e in exclude):
            continue
        h.update(rel.encode() + b"\0" + _file_digest(p).encode() + b"\n")
    return h.hexdigest()


def plugin_versions() -> dict[str, dict[str, str]]:
    """NAME -> VERSION of every check and cataloger (what the report's plugin list shows)."""
    from vmscan.registry import all_catalogers, all_checks

    return {
        "checks": {c.NAME: str(c.VERSION) for c in all_checks()},
        "catalogers": {c.NAME: str(c.VERSION) for c in all_catalogers()},
    }


def clamd_version(address: str, timeout: float = 10.0) -> str:
    """A clamd's ``VERSION`` reply (engine/daily database number/date), or why not."""
    from vmscan.av.clamd_client import ClamdClient

    try:
        return ClamdClient(address, timeout=timeout, connect_timeout=timeout).version()
    except Exception as exc:  # unreachable: the antivirus check fails and is not carried
        return f"unreachable:{type(exc).__name__}"


def _clamd_binary_stamp() -> str:
    """Which clamd program a managed clamd would be (an upgrade changes verdicts)."""
    try:
        from vmscan.av.clamd_manager import find_clamd
    except ImportError:
        return ""
    path = find_clamd()
    if not path:
        return "no clamd"
    with contextlib.suppress(OSError):
        st = os.stat(path)
        return f"{path}:{st.st_size}:{st.st_mtime_ns}"
    return path


def data_digests(cfg: NightlyConfig, *, remote_clamd: str | None = None) -> dict[str, str]:
    """One digest per component (see :data:`COMPONENT_CHECK`) of what its check reads.

    Each holds the check's NAME and VERSION, the tables it reads (by content) and the
    tables of the signatures folder no component claims. ``remote_clamd``: the
    ``VERSION`` reply of the configured clamd (queried when None and one is configured).
    A managed clamd loads exactly the files hashed here (vmscan's databases and
    /var/lib/clamav) and is started only when something is scanned; its own ``VERSION``
    reply is recorded in each antivirus result (``engine``).
    """
    from vmscan.license.policy import DEFAULT_POLICY
    from vmscan.license.spdx_map import DEFAULT_TABLE

    sig_dir = Path(cfg.signatures_dir) if cfg.signatures_dir else default_signatures_dir()
    versions = plugin_versions()["checks"]
    unclaimed = _data_tree(sig_dir, _CLAIMED)
    eol = _file_digest(sig_dir / "eol.json")
    out: dict[str, str] = {}

    def put(component: str, **parts: str) -> None:
        check = COMPONENT_CHECK[component]
        head = {"plugin": f"{check}/{versions.get(check, '?')}", "unclaimed": unclaimed}
        out[component] = _digest({**head, **parts})

    if "antivirus" in cfg.checks:
        content, hashes = "", ""
        try:
            from vmscan.av.signatures import split_digests

            content, hashes = split_digests(sig_dir / "clamav")
        except (ImportError, OSError, TypeError) as exc:
            log.debug("signature digest from vmscan.av failed (%s); hashing files", exc)
        if cfg.clamd:
            engine = remote_clamd if remote_clamd is not None else clamd_version(cfg.clamd)
        else:
            engine = "managed:" + _clamd_binary_stamp() + ";" + _clamav_system_stamp()
        put(
            "antivirus",
            own=content or _data_tree(sig_dir / "clamav", ()),
            engine=engine,
            av_scope=cfg.av_scope,
        )
        put("antivirus:hashes", hashes=hashes or _data_tree(sig_dir / "clamav", ()))
    if "patch" in cfg.checks:
        digest = ""
        try:
            from vmscan.advisories import index_digest

            digest = index_digest(sig_dir / "advisories")
        except (ImportError, OSError, ValueError, VmscanError) as exc:
            log.warning("advisory index digest failed (%s); hashing files", exc)
        put("patch", advisories=digest or _data_tree(sig_dir / "advisories", ()), eol=eol)
        put("patch:windows", builds=_file_digest(sig_dir / "windows-builds.json"))
    if "license" in cfg.checks:
        policy = Path(cfg.license_policy) if cfg.license_policy else DEFAULT_POLICY
        put(
            "license",
            policy=str(policy),
            policy_sha256=_file_digest(policy),
            name_map=_file_digest(DEFAULT_TABLE),
            licenses=_data_tree(sig_dir / "licenses", ()),
        )
    if "migration" in cfg.checks:
        put("migration", eol=eol)
    return out


def relevant_digests(digests: dict[str, str], os_types: list[str] | None) -> dict[str, str]:
    """The components an image's result depends on (all of them while its OS is unknown)."""
    if os_types is None or "windows" in os_types:
        return dict(digests)
    return {k: v for k, v in digests.items() if k not in WINDOWS_ONLY}


def changed_components(old: dict[str, str], new: dict[str, str]) -> set[str]:
    """Components whose digest differs (present in one only counts as changed)."""
    return {k for k in set(old) | set(new) if old.get(k) != new.get(k)}


def changed_checks(
    old: dict[str, str], new: dict[str, str], checks: tuple[str, ...]
) -> tuple[str, ...]:
    """Checks (of ``checks``) at least one of whose components differs."""
    names = {COMPONENT_CHECK.get(k, k) for k in changed_components(old, new)}
    return tuple(c for c in checks if c in names)


def _clamav_system_stamp() -> str:
    folder = Path("/var/lib/clamav")
    parts = []
    with contextlib.suppress(OSError):
        for p in sorted(folder.iterdir()):
            if p.suffix in (".cvd", ".cld", ".cud") and p.is_file():
                st = p.stat()
                parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


def scan_settings(cfg: NightlyConfig) -> dict[str, Any]:
    """Options that change a result (not limits or report settings)."""
    return {
        "vmscan_version": __version__,
        "checks": sorted(cfg.checks),
        "manifest": cfg.manifest,
        "disk_format": cfg.disk_format,
        "allow_backing": sorted(cfg.allow_backing),
        # Which check runs and which catalogers read the inventory: a new cataloger version
        # changes every check's input (check versions are in their own digests).
        "catalogers": plugin_versions()["catalogers"],
    }


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def keys_for(
    identity: dict[str, Any],
    cfg: NightlyConfig,
    digests: dict[str, str],
    os_types: list[str] | None = None,
) -> tuple[str, str]:
    """(base key: identity + settings, full key: base + the data digests the image uses)."""
    base = _digest({"identity": identity, "settings": scan_settings(cfg)})
    return base, scan_key_for(base, digests, os_types)


def scan_key_for(base: str, digests: dict[str, str], os_types: list[str] | None) -> str:
    """The full key of an image whose result has roots of ``os_types`` (None: unknown)."""
    return _digest({"base": base, "digests": relevant_digests(digests, os_types)})

"""Nightly job: config, discovery, skip-unchanged, resume, storage waves, reports, metrics."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import fcntl
import fnmatch
import glob
import hashlib
import json
import logging
import os
import re
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmscan import __version__
from vmscan.completeness import (
    EXIT_IMAGE_ERROR,
    EXIT_OK,
    exit_code,
    finalize_image_dict,
    incomplete_plugins,
    plugin_status,
)
from vmscan.diff import diff_runs, iter_roots
from vmscan.errors import UsageError, VmscanError
from vmscan.model import SEVERITY_ORDER, ImageResult, ImageStatus, ScanResult, to_jsonable
from vmscan.state import RUN_COMPLETE, RUN_FAILED, RUN_INTERRUPTED, StateDB, utcnow

log = logging.getLogger(__name__)

ALL_CHECKS = ("antivirus", "patch", "license", "migration")
REPORT_FORMATS_DEFAULT = ("json", "html", "sarif")
IMAGE_EXTENSIONS = ("qcow2", "qcow", "img", "raw", "vmdk", "vhd", "vhdx")
HEAD_BYTES = 1 << 20
_QEMU_IMG_TIMEOUT = 60
_MAX_INFO_BYTES = 4 << 20

# Exit codes and ``exit_code`` are vmscan.completeness's (the same for ``vmscan scan``).

# Which check's results depend on which data digest: a change of only that digest
# re-runs only that check on an otherwise unchanged image.
DIGEST_CHECKS: dict[str, str] = {"signatures": "antivirus", "advisories": "patch"}
# Checks that read only the stored inventory (packages, OS facts), never the guest: when
# only their data changed they are re-run on the stored result, with no appliance.
# PatchCheck.run matches ctx.root.packages against the advisory feed and ignores ``fs``.
# Sections a check writes besides its own name (replaced with it on a partial rescan).
CHECK_SECTIONS: dict[str, tuple[str, ...]] = {"antivirus": ("antivirus", "pe")}
OFFLINE_CHECKS: dict[str, tuple[str, str]] = {"patch": ("vmscan.checks.patch", "PatchCheck")}

ScanFn = Callable[..., ScanResult]


class ConfigError(UsageError):
    """The nightly configuration is invalid (exit code 3)."""


class BusyError(VmscanError):
    """Another nightly job holds the state database's lock."""


# --------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class NightlyConfig:
    """A validated ``vmscan.toml``. Paths are absolute (relative to the config's folder)."""

    path: Path
    image_paths: tuple[str, ...] = ()
    libvirt_xml_dirs: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    recursive: bool = False
    #: Folders (besides the configured paths) where a symlinked image may point.
    symlink_targets: tuple[str, ...] = ()
    checks: tuple[str, ...] = ALL_CHECKS
    manifest: bool = True
    disk_format: str | None = None
    allow_backing: tuple[str, ...] = ()
    signatures_dir: str | None = None
    av_scope: str = "all"
    clamd: str | None = None
    license_policy: str | None = None
    jobs: int = 1
    memsize: int | None = None
    timeout: float = 3600.0
    accel: str = "auto"
    max_per_storage: int = 1
    storage_group: str = "device"
    state_db: Path = Path("state.db")
    reports_dir: Path = Path("reports")
    formats: tuple[str, ...] = REPORT_FORMATS_DEFAULT
    keep_runs: int | None = 30
    keep_days: float | None = None
    trend_runs: int = 14
    fail_on: str | None = "high"
    # Fleet (issue 13): a Dask scheduler ("tcp://HOST:8786", "local:N"); None: this host.
    scheduler: str | None = None
    fleet_wait_workers: float = 120.0

    def digest(self) -> str:
        """sha256 of the settings (paths and options) for the run record."""
        data = {k: str(v) for k, v in dataclasses.asdict(self).items()}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class _Key:
    """One allowed key: a type name, an optional check and an attribute of NightlyConfig."""

    kind: str  # str, bool, int, number, list[str]
    attr: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    path: bool = False


_SCHEMA: dict[str, dict[str, _Key]] = {
    "": {"fail_on": _Key("str", "fail_on", ("none", "info", "low", "medium", "high", "critical"))},
    "images": {
        "paths": _Key("list[str]", "image_paths", path=True),
        "libvirt_xml_dirs": _Key("list[str]", "libvirt_xml_dirs", path=True),
        "exclude": _Key("list[str]", "exclude"),
        "extensions": _Key("list[str]", "extensions"),
        "recursive": _Key("bool", "recursive"),
        "symlink_targets": _Key("list[str]", "symlink_targets", path=True),
    },
    "scan": {
        "checks": _Key("list[str]", "checks", ALL_CHECKS),
        "manifest": _Key("bool", "manifest"),
        "disk_format": _Key("str", "disk_format", ("qcow2", "vmdk", "vhd", "vpc", "vhdx", "raw")),
        "allow_backing": _Key("list[str]", "allow_backing", path=True),
        "signatures_dir": _Key("str", "signatures_dir", path=True),
        "av_scope": _Key("str", "av_scope"),
        "clamd": _Key("str", "clamd"),
        "license_policy": _Key("str", "license_policy", path=True),
    },
    "limits": {
        "jobs": _Key("int", "jobs", minimum=1),
        "memsize": _Key("int", "memsize", minimum=256),
        "timeout": _Key("number", "timeout", minimum=1),
        "accel": _Key("str", "accel", ("auto", "kvm", "tcg")),
        "max_per_storage": _Key("int", "max_per_storage", minimum=1),
        "storage_group": _Key("str", "storage_group", ("device", "folder")),
    },
    "state": {"database": _Key("str", "state_db", path=True)},
    "reports": {
        "dir": _Key("str", "reports_dir", path=True),
        "formats": _Key("list[str]", "formats"),
        "keep_runs": _Key("int", "keep_runs", minimum=1),
        "keep_days": _Key("number", "keep_days", minimum=0),
        "trend_runs": _Key("int", "trend_runs", minimum=1),
    },
    "fleet": {
        "scheduler": _Key("str", "scheduler"),
        "wait_workers": _Key("number", "fleet_wait_workers", minimum=0),
    },
}

_TABLE_RE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_KEY_RE = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*=""")


def _unquote(part: str) -> str:
    part = part.strip()
    if len(part) >= 2 and part[0] == part[-1] and part[0] in "\"'":
        return part[1:-1]
    return part


def key_line(text: str, table: str, key: str | None) -> int | None:
    """1-based line of ``key`` in ``[table]`` (or of the table header when key is None)."""
    current = ""
    for number, line in enumerate(text.splitlines(), 1):
        m = _TABLE_RE.match(line)
        if m:
            current = ".".join(_unquote(p) for p in m.group(1).split("."))
            if key is None and current == table:
                return number
            continue
        m = _KEY_RE.match(line)
        if not m:
            continue
        name = ".".join(_unquote(p) for p in m.group(1).split("."))
        full = f"{current}.{name}" if current else name
        want = f"{table}.{key}" if table and key else (key or table)
        if full == want:
            return number
    return None


def _where(cfg_path: Path, text: str, table: str, key: str | None) -> str:
    line = key_line(text, table, key)
    return f"{cfg_path}:{line}" if line else str(cfg_path)


def _type_ok(spec: _Key, value: Any) -> bool:
    if spec.kind == "str":
        return isinstance(value, str)
    if spec.kind == "bool":
        return isinstance(value, bool)
    if spec.kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if spec.kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if spec.kind == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    raise AssertionError(spec.kind)


_KIND_NAMES = {
    "str": "a string",
    "bool": "a boolean (true or false)",
    "int": "an integer",
    "number": "a number",
    "list[str]": "an array of strings",
}


def _type_name(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }
    return names.get(type(value), type(value).__name__)


def load_config(path: str | os.PathLike[str]) -> NightlyConfig:
    """Read and strictly validate a nightly TOML config (ConfigError names key and line)."""
    cfg_path = Path(path).absolute()
    try:
        text = cfg_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {cfg_path}: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{cfg_path}: not valid TOML: {exc}") from exc
    return config_from_dict(data, cfg_path, text)


def config_from_dict(data: dict[str, Any], cfg_path: Path, text: str = "") -> NightlyConfig:
    """Validate parsed TOML (``text`` is used only to name line numbers in errors)."""
    base = cfg_path.parent
    values: dict[str, Any] = {}
    errors: list[str] = []
    for name, value in data.items():
        if isinstance(value, dict):
            table, items = name, value
            if table not in _SCHEMA or table == "":
                hint = difflib.get_close_matches(table, [t for t in _SCHEMA if t], 1)
                extra = f" (did you mean [{hint[0]}]?)" if hint else ""
                errors.append(
                    f"{_where(cfg_path, text, table, None)}: unknown section [{table}]{extra}; "
                    f"known: {', '.join('[' + t + ']' for t in _SCHEMA if t)}"
                )
                continue
        else:
            table, items = "", {name: value}
        allowed = _SCHEMA[table]
        for key, val in items.items():
            label = f"{table}.{key}" if table else key
            where = _where(cfg_path, text, table, key)
            spec = allowed.get(key)
            if spec is None:
                hint = difflib.get_close_matches(key, list(allowed), 1)
                extra = f" (did you mean '{hint[0]}'?)" if hint else ""
                scope = f"in [{table}]" if table else "at top level"
                errors.append(
                    f"{where}: unknown key '{key}' {scope}{extra}; known: {', '.join(allowed)}"
                )
                continue
            if not _type_ok(spec, val):
                errors.append(
                    f"{where}: '{label}' must be {_KIND_NAMES[spec.kind]},"
                    f" not {_type_name(val)} ({val!r})"
                )
                continue
            if spec.minimum is not None and val < spec.minimum:
                errors.append(f"{where}: '{label}' must be at least {spec.minimum:g}, not {val!r}")
                continue
            if spec.choices:
                items_ = val if isinstance(val, list) else [val]
                bad = [v for v in items_ if v not in spec.choices]
                if bad:
                    errors.append(
                        f"{where}: '{label}' has unknown value(s) {', '.join(map(repr, bad))};"
                        f" choose from {', '.join(spec.choices)}"
                    )
                    continue
            if spec.path:
                if isinstance(val, list):
                    val = [os.path.normpath(base / os.path.expanduser(v)) for v in val]
                else:
                    val = os.path.normpath(base / os.path.expanduser(val))
            values[spec.attr] = val
    if "formats" in values:
        from vmscan.report import WRITERS

        bad = [f for f in values["formats"] if f not in WRITERS]
        if bad:
            errors.append(
                f"{_where(cfg_path, text, 'reports', 'formats')}: unknown report format(s) "
                f"{', '.join(map(repr, bad))}; known: {', '.join(sorted(WRITERS))}"
            )
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
    if not values.get("image_paths") and not values.get("libvirt_xml_dirs"):
        raise ConfigError(
            f"{cfg_path}: nothing to scan: set [images] paths and/or libvirt_xml_dirs"
        )
    out: dict[str, Any] = {"path": cfg_path}
    for attr, val in values.items():
        if isinstance(val, list):
            val = tuple(val)
        if attr in ("state_db", "reports_dir"):
            val = Path(val)
        if attr == "fail_on" and val == "none":
            val = None
        if attr == "extensions":
            val = tuple(v.lower().lstrip(".") for v in val)
        out[attr] = val
    out.setdefault("state_db", base / "state.db")
    out.setdefault("reports_dir", base / "reports")
    return NightlyConfig(**out)


# --------------------------------------------------------------------------------------
# Discovery


@dataclass(frozen=True)
class Source:
    """One thing to scan: an image file or a libvirt domain XML (with its disks)."""

    path: str
    kind: str  # "image" | "domain"
    disks: tuple[str, ...]
    error: str = ""  # set when the source cannot be used (not found, bad XML)


@dataclass
class Discovery:
    """What discovery found, plus warnings for a person."""

    sources: list[Source] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _excluded(path: str, patterns: tuple[str, ...]) -> bool:
    return any(
        fnmatch.fnmatch(path, p) or fnmatch.fnmatch(os.path.basename(path), p) for p in patterns
    )


def _domain_disks(xml_path: Path) -> tuple[str, ...]:
    from vmscan.disk import parse_domain_xml

    disks = []
    for file, _fmt in parse_domain_xml(xml_path):
        disks.append(file if os.path.isabs(file) else str(xml_path.parent / file))
    return tuple(disks)


def _is_domain(path: Path) -> bool:
    from vmscan.disk import is_domain_xml

    return is_domain_xml(path)


def _folder_images(folder: str, cfg: NightlyConfig) -> list[str]:
    exts = {"." + e for e in cfg.extensions}
    found: list[str] = []
    if cfg.recursive:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            found.extend(os.path.join(dirpath, n) for n in sorted(filenames))
    else:
        with contextlib.suppress(OSError):
            found = [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
    # Not only regular files: a FIFO or socket named like an image is reported, not skipped.
    return [
        p
        for p in found
        if not os.path.isdir(p) and (Path(p).suffix.lower() in exts or Path(p).suffix == ".xml")
    ]


def _configured_roots(cfg: NightlyConfig) -> list[str]:
    """Folders the config names (resolved): where a symlink found by discovery may point."""
    roots: list[str] = []
    for item in cfg.image_paths:
        glob_at = min((item.index(c) for c in "*?[" if c in item), default=-1)
        base = os.path.dirname(item[:glob_at]) if glob_at >= 0 else item
        if glob_at < 0 and not os.path.isdir(item):
            base = os.path.dirname(item)
        roots.append(os.path.realpath(base or "."))
    roots.extend(os.path.realpath(d) for d in (*cfg.libvirt_xml_dirs, *cfg.symlink_targets))
    return roots


def _source_problem(path: str, roots: list[str]) -> str:
    """Why a discovered image cannot be used ('' when it can): kind and symlink target."""
    from vmscan.source.kinds import check_source_path

    if not os.path.lexists(path):
        return "image not found"
    try:
        src = check_source_path(path)
    except VmscanError as exc:
        return str(exc)
    real = src.real
    if real != os.path.abspath(path) and not any(
        real == r or real.startswith(r.rstrip("/") + "/") for r in roots
    ):
        return (
            f"a symlink to {real}, outside the configured paths: not followed (add its "
            f"folder to [images] symlink_targets to allow it)"
        )
    return ""


def discover(cfg: NightlyConfig) -> Discovery:
    """Sources named by the config, deduplicated; a disk owned by a domain is not repeated."""
    out = Discovery()
    candidates: list[str] = []
    for item in cfg.image_paths:
        if any(c in item for c in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                out.warnings.append(f"{item}: the pattern matches nothing")
            for m in matches:
                candidates.extend(_folder_images(m, cfg) if os.path.isdir(m) else [m])
        elif os.path.isdir(item):
            found = _folder_images(item, cfg)
            if not found:
                out.warnings.append(f"{item}: no disk images in this folder")
            candidates.extend(found)
        else:
            # A named file that is missing is an image that could not be scanned.
            candidates.append(item)
    domain_files: list[str] = []
    for folder in cfg.libvirt_xml_dirs:
        if not os.path.isdir(folder):
            out.warnings.append(f"{folder}: libvirt XML folder not found")
            continue
        for name in sorted(os.listdir(folder)):
            full = os.path.join(folder, name)
            if name.endswith(".xml") and _is_domain(Path(full)):
                domain_files.append(full)
    sources: list[Source] = []
    for path in domain_files + [c for c in candidates if c.endswith(".xml")]:
        if _excluded(path, cfg.exclude):
            continue
        if not _is_domain(Path(path)):
            continue
        try:
            disks = _domain_disks(Path(path))
        except VmscanError as exc:
            sources.append(Source(path, "domain", (), error=str(exc)))
            continue
        sources.append(Source(path, "domain", disks))
    owned = {os.path.realpath(d) for s in sources for d in s.disks}
    roots = _configured_roots(cfg)
    for path in candidates:
        if path.endswith(".xml") or _excluded(path, cfg.exclude):
            continue
        if os.path.realpath(path) in owned:
            continue  # scanned as part of its libvirt domain
        err = _source_problem(path, roots)
        sources.append(Source(path, "image", (path,), error=err))
    seen: set[str] = set()
    for src in sources:
        real = os.path.realpath(src.path)
        if real in seen:
            continue
        seen.add(real)
        out.sources.append(src)
    return out


# --------------------------------------------------------------------------------------
# Identity and digests


def _qemu_info_digest(path: str) -> tuple[str, dict[str, Any]]:
    """sha256 of ``qemu-img info`` JSON (the image's metadata) and the parsed info."""
    from vmscan.disk import sniff_format

    try:
        fmt = sniff_format(Path(path))
    except VmscanError as exc:
        return "error:" + str(exc), {}
    from vmscan.disk import FORMATS
    from vmscan.proc import SubprocessError, run_bounded

    if fmt not in FORMATS:
        return f"unsupported:{fmt}", {}
    cmd = ["qemu-img", "info", "--output=json", "-f", fmt, "-U", path]
    try:
        # Own process group, killed and reaped on expiry (a hostile extent can hang it).
        proc = run_bounded(cmd, timeout=_QEMU_IMG_TIMEOUT, max_output=_MAX_INFO_BYTES)
    except SubprocessError as exc:
        return f"error:{type(exc).__name__}", {}
    if proc.returncode != 0:
        return "error:" + hashlib.sha256(proc.stderr).hexdigest(), {}
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return "error:unreadable", {}
    canon = json.dumps(info, sort_keys=True).encode()
    return hashlib.sha256(canon).hexdigest(), info if isinstance(info, dict) else {}


def quick_stat(path: str) -> dict[str, int]:
    """size, mtime_ns, inode and device of a file (follows symlinks)."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "dev": st.st_dev}


def file_identity(path: str, *, with_qemu_info: bool = True) -> dict[str, Any]:
    """Identity of one disk file: stat triple, sha256 of the first MiB, metadata digest.

    Raises OSError when the file is gone or unreadable.
    """
    ident: dict[str, Any] = {"path": path, **quick_stat(path)}
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(HEAD_BYTES))
    ident["head_sha256"] = h.hexdigest()
    if with_qemu_info:
        digest, info = _qemu_info_digest(path)
        ident["info_sha256"] = digest
        # A qcow2 overlay's content depends on its backing file: include its stat.
        backing = info.get("full-backing-filename") or info.get("backing-filename")
        if isinstance(backing, str) and backing:
            bpath = (
                backing if os.path.isabs(backing) else os.path.join(os.path.dirname(path), backing)
            )
            try:
                ident["backing"] = {"path": bpath, **quick_stat(bpath)}
            except OSError as exc:
                ident["backing"] = {"path": bpath, "error": exc.strerror or str(exc)}
    # st_dev is not identity (a remount changes it); keep it only for grouping.
    ident.pop("dev", None)
    return ident


def source_identity(src: Source) -> dict[str, Any]:
    """Identity of a source: its disks (and, for a domain, the XML's content hash)."""
    ident: dict[str, Any] = {"kind": src.kind}
    if src.kind == "domain":
        data = Path(src.path).read_bytes()[: 4 << 20]
        ident["xml_sha256"] = hashlib.sha256(data).hexdigest()
    ident["disks"] = [file_identity(d) for d in src.disks]
    return ident


def _hash_tree(folder: Path, *, exclude: tuple[str, ...] = ()) -> str:
    h = hashlib.sha256()
    if not folder.is_dir():
        return "absent"
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or any(rel == e or rel.startswith(e + "/") for e in exclude):
            continue
        h.update(rel.encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\n")
    return h.hexdigest()


def default_signatures_dir() -> Path:
    """$VMSCAN_SIGNATURES or the repository's ``signatures/``."""
    env = os.environ.get("VMSCAN_SIGNATURES")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "signatures"


def data_digests(cfg: NightlyConfig) -> dict[str, str]:
    """Digests of the antivirus signatures and the advisory feed in use."""
    sig_dir = Path(cfg.signatures_dir) if cfg.signatures_dir else default_signatures_dir()
    out: dict[str, str] = {}
    if "antivirus" in cfg.checks:
        digest = ""
        try:
            from vmscan.av.signatures import database_digest

            digest = database_digest(sig_dir / "clamav")
        except (ImportError, OSError, TypeError) as exc:
            log.debug("signature digest from vmscan.av failed (%s); hashing files", exc)
        if not digest:
            digest = _hash_tree(sig_dir, exclude=("advisories",))
        # clamd's own databases (freshclam updates them) change verdicts too.
        out["signatures"] = hashlib.sha256((digest + _clamav_system_stamp()).encode()).hexdigest()
    if "patch" in cfg.checks:
        # The compiled advisory index's digest (over every feed) plus the shipped tables
        # the patch check reads (end of life, Windows cumulative updates).
        digest = ""
        try:
            from vmscan.advisories import index_digest

            digest = index_digest(sig_dir / "advisories")
        except (ImportError, OSError, ValueError, VmscanError) as exc:
            log.warning("advisory index digest failed (%s); hashing files", exc)
        h = hashlib.sha256((digest or _hash_tree(sig_dir / "advisories")).encode())
        for table in ("eol.json", "windows-builds.json"):
            with contextlib.suppress(OSError):
                h.update(table.encode() + b"\0" + (sig_dir / table).read_bytes())
        out["advisories"] = h.hexdigest()
    return out


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
        "av_scope": cfg.av_scope,
        "license_policy": cfg.license_policy,
    }


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def keys_for(
    identity: dict[str, Any], cfg: NightlyConfig, digests: dict[str, str]
) -> tuple[str, str]:
    """(base key: identity + settings, full key: base + data digests)."""
    base = _digest({"identity": identity, "settings": scan_settings(cfg)})
    return base, _digest({"base": base, "digests": digests})


# --------------------------------------------------------------------------------------
# Planning


@dataclass
class PlanItem:
    """What the night does with one source."""

    source: Source
    action: str  # "scan" | "partial" | "carry" | "error"
    reason: str
    identity: dict[str, Any] | None = None
    base_key: str = ""
    scan_key: str = ""
    checks: tuple[str, ...] = ()
    previous_run: int | None = None
    previous_digest: str = ""
    storage: str = ""


def _storage_of(src: Source, how: str) -> str:
    first = src.disks[0] if src.disks else src.path
    if how == "folder":
        return os.path.dirname(os.path.realpath(first))
    try:
        return f"dev:{os.stat(first).st_dev}"
    except OSError:
        return os.path.dirname(os.path.realpath(first))


def plan(
    cfg: NightlyConfig, sources: list[Source], db: StateDB | None, digests: dict[str, str]
) -> list[PlanItem]:
    """Decide, per source: carry the stored result forward, rescan some checks, or scan."""
    items: list[PlanItem] = []
    for src in sources:
        storage = _storage_of(src, cfg.storage_group)
        if src.error:
            items.append(PlanItem(src, "error", src.error, storage=storage))
            continue
        try:
            identity = source_identity(src)
        except OSError as exc:
            why = "image vanished" if isinstance(exc, FileNotFoundError) else "cannot read image"
            items.append(PlanItem(src, "error", f"{why}: {exc}", storage=storage))
            continue
        base_key, scan_key = keys_for(identity, cfg, digests)
        item = PlanItem(
            src,
            "scan",
            "new image",
            identity,
            base_key,
            scan_key,
            tuple(cfg.checks),
            storage=storage,
        )
        prev = db.latest_image_row(src.path) if db is not None else None
        if prev is not None:
            item.previous_run = prev.run_id
            item.previous_digest = prev.result_digest
            prev_meta = prev.identity or {}
            if not prev.scan_key and prev.status != "error":
                # Stored without a key: a check did not complete (or the image changed
                # under the scan). Never carried forward: scanned again.
                item.reason = (
                    f"the scan of run {prev.run_id} did not complete (or the image changed "
                    "under it): retried"
                )
            elif prev.scan_key == scan_key:
                item.action, item.reason = "carry", f"unchanged since run {prev.origin_run_id}"
            elif prev_meta.get("base_key") == base_key:
                old = prev_meta.get("digests") or {}
                changed = sorted(
                    DIGEST_CHECKS[k]
                    for k in DIGEST_CHECKS
                    if old.get(k) != digests.get(k) and DIGEST_CHECKS[k] in cfg.checks
                )
                if changed:
                    item.action, item.checks = "partial", tuple(changed)
                    item.reason = f"image unchanged; data changed for {', '.join(changed)}"
                else:
                    item.reason = "scan settings changed"
            else:
                item.reason = "image or settings changed"
        items.append(item)
    return items


def waves(items: list[PlanItem], jobs: int, per_storage: int) -> list[list[PlanItem]]:
    """Batches with at most ``jobs`` images and ``per_storage`` per storage group each.

    Groups are taken round-robin so one busy datastore does not delay the others.
    """
    groups: dict[str, list[PlanItem]] = {}
    for it in items:
        groups.setdefault(it.storage, []).append(it)
    if not items:
        return []
    if per_storage >= jobs or len(groups) == 1:
        # The limit cannot bind (or the caller caps jobs at per_storage): one batch lets
        # the scanner keep every worker busy instead of waiting for a wave's slowest image.
        return [list(items)]
    out: list[list[PlanItem]] = []
    queues = [list(g) for g in groups.values()]
    while any(queues):
        wave: list[PlanItem] = []
        for q in queues:
            take = min(per_storage, len(q), jobs - len(wave))
            wave.extend(q[:take])
            del q[:take]
            if len(wave) >= jobs:
                break
        out.append(wave)
    return out


# --------------------------------------------------------------------------------------
# Results


def _sections_of(checks: tuple[str, ...]) -> list[str]:
    return [name for c in checks for name in CHECK_SECTIONS.get(c, (c,))]


def _merge_partial(
    old: dict[str, Any], new: dict[str, Any], checks: tuple[str, ...]
) -> dict[str, Any]:
    """Old result with only ``checks``' findings and sections replaced by the new scan's."""
    if new.get("status") == "error":
        return new
    merged = copy.deepcopy(old)
    new_roots = {str(r.get("device")): r for r in iter_roots(new)}
    for root in iter_roots(merged):
        fresh = new_roots.get(str(root.get("device")))
        if fresh is None:
            continue
        root["findings"] = [
            f for f in root.get("findings") or [] if f.get("check") not in checks
        ] + [f for f in fresh.get("findings") or [] if f.get("check") in checks]
        sections = dict(root.get("sections") or {})
        for name in _sections_of(checks):
            sections.pop(name, None)
            if name in (fresh.get("sections") or {}):
                sections[name] = fresh["sections"][name]
        root["sections"] = sections
        plugins = {p.get("name"): p for p in root.get("plugins") or []}
        plugins.update({p.get("name"): p for p in fresh.get("plugins") or []})
        root["plugins"] = list(plugins.values())
    sections = merged.setdefault("sections", {})
    for name in _sections_of(checks):
        sections.pop(name, None)
        if name in (new.get("sections") or {}):
            sections[name] = new["sections"][name]
    errors = list(merged.get("errors") or [])
    errors += [e for e in new.get("errors") or [] if e not in errors]
    merged["errors"] = errors
    if new.get("status") == "partial" and merged.get("status") == "ok":
        merged["status"] = "partial"
    for k in ("started_at", "finished_at", "duration_s"):
        if k in new:
            merged[k] = new[k]
    return merged


def _from_dict(cls: Any, data: Any) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in (data or {}).items() if k in names})


def offline_recheck(
    old: dict[str, Any], checks: tuple[str, ...], options: dict[str, Any]
) -> dict[str, Any] | None:
    """Re-run inventory-only checks on a stored result; None when that is not possible."""
    import importlib

    from vmscan.model import OSInfo, Package, PluginStatus, RootResult
    from vmscan.plugins import ScanContext

    if not checks or any(c not in OFFLINE_CHECKS for c in checks):
        return None
    try:
        plugins = [
            getattr(importlib.import_module(OFFLINE_CHECKS[c][0]), OFFLINE_CHECKS[c][1])()
            for c in checks
        ]
    except (ImportError, AttributeError) as exc:
        log.debug("offline re-check unavailable: %s", exc)
        return None
    merged = copy.deepcopy(old)
    for root in iter_roots(merged):
        rr = RootResult(
            device=str(root.get("device", "")),
            os=_from_dict(OSInfo, root.get("os")),
            mountpoints=dict(root.get("mountpoints") or {}),
            packages=[_from_dict(Package, p) for p in root.get("packages") or []],
            # Cataloger statuses: the patch check reports a failed inventory as incomplete.
            plugins=[_from_dict(PluginStatus, p) for p in root.get("plugins") or []],
            # Earlier sections: the patch check reuses the repository configuration read then.
            sections=copy.deepcopy(dict(root.get("sections") or {})),
        )
        ctx = ScanContext(root=rr, manifest=[], options=dict(options))
        statuses = {str(p.get("name")): p for p in root.get("plugins") or []}
        fresh: list[Any] = []
        for plugin in plugins:
            ctx.notes = []
            try:
                fresh.extend(plugin.run(None, ctx))
            except Exception as exc:  # fall back to a scan with the appliance
                log.info("offline %s re-check failed (%s); rescanning", plugin.NAME, exc)
                return None
            statuses[plugin.NAME] = to_jsonable(plugin_status(plugin.NAME, ctx.notes))
        root["findings"] = [
            f for f in root.get("findings") or [] if f.get("check") not in checks
        ] + to_jsonable(fresh)
        sections = dict(root.get("sections") or {})
        for check in checks:
            sections.pop(check, None)
            if check in rr.sections:
                sections[check] = to_jsonable(rr.sections[check])
        root["sections"] = sections
        root["plugins"] = list(statuses.values())
    finalize_image_dict(merged)
    return merged


def _error_result(source: str, message: str) -> dict[str, Any]:
    now = utcnow()
    result: dict[str, Any] = to_jsonable(
        ImageResult(
            source=source,
            status=ImageStatus.ERROR,
            errors=[message],
            started_at=now,
            finished_at=now,
        )
    )
    return result


def _all_findings(image: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for r in iter_roots(image) for f in r.get("findings") or []]


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """Counts kept in ``runs.summary`` for trends and metrics."""
    images = doc.get("images") or []
    status = Counter(str(i.get("status")) for i in images)
    sev: Counter[str] = Counter()
    by_check: Counter[str] = Counter()
    carried = 0
    for img in images:
        if ((img.get("sections") or {}).get("state") or {}).get("carried_forward"):
            carried += 1
        for f in _all_findings(img):
            sev[str(f.get("severity", "unknown"))] += 1
            by_check[str(f.get("check", ""))] += 1
    return {
        "images": len(images),
        "images_by_status": dict(sorted(status.items())),
        "findings_by_severity": {k: sev.get(k, 0) for k in SEVERITY_ORDER},
        "findings_by_check": dict(sorted(by_check.items())),
        "carried_forward": carried,
    }


def build_report_document(db: StateDB, run_id: int, *, trend_runs: int = 14) -> dict[str, Any]:
    """A stored run as the report sees it: canonical result + changes + trend."""
    doc = db.run_document(run_id)
    run = db.get_run(run_id)
    assert run is not None
    sections = doc["sections"]
    nightly = run.summary.get("nightly")
    if nightly:
        sections["nightly"] = nightly
    with contextlib.suppress(ImportError):
        from vmscan.license.fleet import fleet_summary

        try:
            sections["license_fleet"] = fleet_summary(doc)
        except Exception as exc:  # a summary never loses the report
            log.warning("licence fleet summary failed: %s", exc)
    prev = db.latest_run(status=RUN_COMPLETE, before=run_id)
    if prev is not None:
        sections["changes"] = diff_runs(db.run_document(prev.id), doc)
    else:
        sections["changes"] = {"baseline": True, "from_run": None, "to_run": run_id}
    trend = []
    for r in reversed(db.list_runs(limit=trend_runs * 3)):
        if r.id > run_id or (r.status not in (RUN_COMPLETE,) and r.id != run_id):
            continue
        summary = summarize(doc) if r.id == run_id else r.summary
        trend.append(
            {
                "run": r.id,
                "started_at": r.started_at,
                "status": r.status,
                **{k: v for k, v in summary.items() if k != "nightly"},
            }
        )
    sections["trend"] = trend[-trend_runs:]
    return doc


# --------------------------------------------------------------------------------------
# The night


@dataclass
class NightlyOutcome:
    """What a nightly run did."""

    run_id: int | None
    exit_code: int
    plan: list[PlanItem]
    scanned: int = 0
    failed: int = 0
    skipped: int = 0
    partial_rescans: int = 0
    duration_s: float = 0.0
    reports: list[Path] = field(default_factory=list)
    findings_by_severity: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    expired_runs: list[int] = field(default_factory=list)
    error: str = ""
    # Plugins that did not complete in this run's results, by name; images concerned.
    checks_incomplete: dict[str, int] = field(default_factory=dict)
    images_incomplete: int = 0


@contextlib.contextmanager
def run_lock(db_path: Path) -> Iterator[None]:
    """One nightly per state database at a time (flock on ``<db>.lock``)."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = db_path.with_name(db_path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise BusyError(
                f"another vmscan nightly is running with {db_path} (lock {lock_path})"
            ) from exc
        yield
    finally:
        os.close(fd)


def plugin_options(cfg: NightlyConfig) -> dict[str, Any]:
    """Options handed to catalogers and checks (as ``vmscan scan`` builds them)."""
    sig_dir = Path(cfg.signatures_dir) if cfg.signatures_dir else default_signatures_dir()
    options: dict[str, Any] = {"av_scope": cfg.av_scope, "signatures_dir": str(sig_dir)}
    if cfg.clamd:
        options["clamd"] = cfg.clamd
    if cfg.license_policy:
        options["license_policy"] = cfg.license_policy
    if "patch" in cfg.checks:
        # Compile the advisory index once; workers open it read-only by this path.
        with contextlib.suppress(ImportError, OSError, ValueError, VmscanError):
            from vmscan.advisories import prepare

            prepare(options)
    return options


def make_scan_options(cfg: NightlyConfig, checks: tuple[str, ...], jobs: int) -> Any:
    """The scanner's ScanOptions for this config (only the fields it knows)."""
    from vmscan.scanner import ScanOptions

    plugin_options_ = plugin_options(cfg)
    wanted: dict[str, Any] = {
        "jobs": jobs,
        "memsize": cfg.memsize,
        "timeout": cfg.timeout,
        "accel": cfg.accel,
        "manifest": cfg.manifest,
        "checks": checks,
        "fail_on": cfg.fail_on,
        "allow_backing": cfg.allow_backing,
        "disk_format": cfg.disk_format,
        "state_db": str(cfg.state_db),
        "quiet": True,
        "plugin_options": plugin_options_,
    }
    names = {f.name for f in dataclasses.fields(ScanOptions)}
    return ScanOptions(**{k: v for k, v in wanted.items() if k in names})


def _default_scan_fn() -> ScanFn:
    from vmscan.scanner import scan_sources

    return scan_sources


@contextlib.contextmanager
def _services(opts: Any) -> Iterator[None]:
    """vmscan's own clamd for the run, as ``vmscan scan`` does (when the CLI offers it)."""
    try:
        from vmscan.cli import _managed_services
    except ImportError:
        yield
        return
    with _managed_services(opts):
        yield


def run_nightly(
    cfg: NightlyConfig,
    *,
    scan_fn: ScanFn | None = None,
    metrics_path: str | os.PathLike[str] | None = None,
    manage_services: bool | None = None,
) -> NightlyOutcome:
    """One night: plan, scan what changed, store per image, report, expire, metrics."""
    t0 = time.monotonic()
    real_scanner = scan_fn is None
    scan = scan_fn or _default_scan_fn()
    if manage_services is None:
        manage_services = real_scanner
    discovery = discover(cfg)
    for w in discovery.warnings:
        log.warning("%s", w)
    outcome = NightlyOutcome(
        run_id=None, exit_code=EXIT_OK, plan=[], warnings=list(discovery.warnings)
    )
    digests = data_digests(cfg)
    try:
        with run_lock(cfg.state_db), StateDB(cfg.state_db) as db:
            for rid in db.recovered:
                outcome.warnings.append(
                    f"run {rid} had been interrupted; its finished images are reused"
                )
            items = plan(cfg, discovery.sources, db, digests)
            outcome.plan = items
            run_id = db.begin_run(
                config_digest=cfg.digest(),
                vmscan_version=__version__,
                checks=cfg.checks,
                digests=digests,
            )
            outcome.run_id = run_id
            log.info(
                "run %d: %d source(s): %s",
                run_id,
                len(items),
                dict(Counter(i.action for i in items)),
            )
            try:
                _execute(cfg, db, run_id, items, digests, scan, outcome, manage_services)
            except BaseException as exc:
                interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
                status = RUN_INTERRUPTED if interrupted else RUN_FAILED
                with contextlib.suppress(VmscanError):
                    db.finish_run(run_id, status, error=f"{type(exc).__name__}: {exc}")
                log.error("run %d %s: %s", run_id, status, exc)
                raise
            _finish(cfg, db, run_id, outcome, discovery.warnings)
    except BaseException as exc:
        interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
        code = int(getattr(exc, "exit_code", 130))  # 128 + signal (runctl.Interrupted)
        outcome.exit_code = code if interrupted else EXIT_IMAGE_ERROR
        outcome.error = outcome.error or f"{type(exc).__name__}: {exc}"
        raise
    finally:
        outcome.duration_s = round(time.monotonic() - t0, 3)
        if metrics_path is not None:
            write_metrics(metrics_path, outcome)
    return outcome


def _execute(
    cfg: NightlyConfig,
    db: StateDB,
    run_id: int,
    items: list[PlanItem],
    digests: dict[str, str],
    scan: ScanFn,
    outcome: NightlyOutcome,
    manage_services: bool,
) -> None:
    by_source: dict[str, PlanItem] = {}
    for it in items:
        by_source[it.source.path] = it
        by_source.setdefault(os.path.realpath(it.source.path), it)
    done: set[str] = set()

    def store(
        item: PlanItem,
        result: dict[str, Any],
        *,
        carried: bool = False,
        origin: int | None = None,
        ident: dict[str, Any] | None = None,
        offline: bool = False,
    ) -> None:
        meta = None
        if ident is not None:
            meta = {**ident, "base_key": item.base_key, "digests": digests}
        old_state = (result.get("sections") or {}).get("state") or {}
        scanned_at = (old_state.get("scanned_at") if carried or offline else "") or result.get(
            "finished_at", ""
        )
        state: dict[str, Any] = {"carried_forward": carried, "scanned_at": scanned_at}
        if item.action == "partial":
            state["rescanned_checks"] = list(item.checks)
            state["rechecked_at"] = utcnow()
            # Offline: re-run on the stored inventory, the image was not opened.
            state["rechecked_offline"] = offline
        result.setdefault("sections", {})["state"] = state
        db.add_image_result(
            run_id,
            item.source.path,
            result,
            identity=meta,
            scan_key=item.scan_key if meta is not None else "",
            carried_forward=carried,
            origin_run_id=origin,
        )
        done.add(item.source.path)

    for it in items:
        if it.action == "error":
            store(it, _error_result(it.source.path, it.reason))
            outcome.failed += 1
        elif it.action == "carry":
            prev = db.latest_image_row(it.source.path)
            assert prev is not None
            result = db.load_result(prev.result_digest)
            store(it, result, carried=True, origin=prev.origin_run_id, ident=it.identity)
            outcome.skipped += 1

    def on_image_done(img: ImageResult, placement: dict[str, Any] | None = None) -> None:
        item = by_source.get(img.source) or by_source.get(os.path.realpath(img.source))
        if item is None or item.source.path in done:
            log.warning("scanner returned an unexpected source %r", img.source)
            return
        result: dict[str, Any] = to_jsonable(img)
        result["source"] = item.source.path
        if placement is not None:  # fleet: which worker and host scanned it, when, retries
            result.setdefault("sections", {})["fleet"] = placement
        if item.action == "partial" and item.previous_digest:
            result = _merge_partial(db.load_result(item.previous_digest), result, item.checks)
        finalize_image_dict(result)  # whatever the scan function: status follows plugins
        ident = item.identity
        try:
            after = source_identity(item.source)
            before = item.identity or {}
            if [_stat_part(d) for d in after["disks"]] != [
                _stat_part(d) for d in before.get("disks", [])
            ]:
                result.setdefault("errors", []).append(
                    "the image changed while it was scanned (size, mtime or inode differ): "
                    "this result may be inconsistent; it is rescanned next run"
                )
                if result.get("status") == "ok":
                    result["status"] = "partial"
                ident = None
        except OSError as exc:
            result.setdefault("errors", []).append(f"the image vanished during the scan: {exc}")
            result["status"] = "error"
            ident = None
        if ident is not None and incomplete_plugins(result):
            # A check that did not complete is retried next run: nothing is carried forward.
            ident = None
        if result.get("status") == "error":
            outcome.failed += 1
            log.error("%s: %s", item.source.path, "; ".join(result.get("errors") or []) or "error")
        else:
            outcome.scanned += 1
            if item.action == "partial":
                outcome.partial_rescans += 1
        store(item, result, ident=ident)
        log.info("%s: %s", item.source.path, result.get("status"))

    for it in items:
        if it.action != "partial" or not it.previous_digest:
            continue
        options = {**plugin_options(cfg), "state_db": str(cfg.state_db)}
        rechecked = offline_recheck(db.load_result(it.previous_digest), it.checks, options)
        if rechecked is None:
            continue
        rechecked.setdefault("errors", [])
        ident = None if incomplete_plugins(rechecked) else it.identity
        store(it, rechecked, ident=ident, offline=True)
        outcome.partial_rescans += 1
        log.info("%s: re-checked %s without opening it", it.source.path, ", ".join(it.checks))

    to_scan = [
        it for it in items if it.action in ("scan", "partial") and it.source.path not in done
    ]
    if cfg.scheduler:
        # --- fleet hook (issue 13): one Dask task per image; everything else in vmscan.fleet.
        from vmscan.fleet import FleetJob
        from vmscan.fleet.coordinator import run_fleet

        run_fleet(
            cfg.scheduler,
            [
                FleetJob(w.source.path, tuple(w.source.disks) or (w.source.path,), w.checks)
                for w in to_scan
            ],
            lambda checks: make_scan_options(cfg, checks, 1),
            on_image_done,
            per_storage=cfg.max_per_storage,
            wait_workers=cfg.fleet_wait_workers,
            digests=digests,
        )
        for w in to_scan:
            if w.source.path not in done:
                store(w, _error_result(w.source.path, "the fleet returned no result"))
                outcome.failed += 1
        return
        # --- end of the fleet hook
    by_checks: dict[tuple[str, ...], list[PlanItem]] = {}
    for it in to_scan:
        by_checks.setdefault(it.checks, []).append(it)
    for checks, group in by_checks.items():
        for wave in waves(group, cfg.jobs, cfg.max_per_storage):
            jobs = min(cfg.jobs, cfg.max_per_storage, len(wave))
            if len({w.storage for w in wave}) > 1:
                jobs = min(cfg.jobs, len(wave))
            opts = make_scan_options(cfg, checks, jobs)
            ctx = _services(opts) if manage_services else contextlib.nullcontext()
            with ctx:
                scanned = scan([w.source.path for w in wave], opts, on_image_done=on_image_done)
            # A scan function that returns results without calling back is fine too.
            for img in scanned.images:
                item = by_source.get(img.source)
                if item is not None and item.source.path not in done:
                    on_image_done(img)
            for w in wave:
                if w.source.path not in done:
                    store(w, _error_result(w.source.path, "the scanner returned no result"))
                    outcome.failed += 1


def _stat_part(d: dict[str, Any]) -> tuple[Any, ...]:
    return (d.get("size"), d.get("mtime_ns"), d.get("inode"))


def _finish(
    cfg: NightlyConfig, db: StateDB, run_id: int, outcome: NightlyOutcome, warnings: list[str]
) -> None:
    from vmscan.report.json_out import ReportWriteError
    from vmscan.report.layout import remove_run_dir, write_run_reports

    doc = db.run_document(run_id)
    summary = summarize(doc)
    summary["nightly"] = {
        "scanned": outcome.scanned,
        "failed": outcome.failed,
        "skipped_unchanged": outcome.skipped,
        "partial_rescans": outcome.partial_rescans,
        "warnings": warnings,
        "plan": [
            {
                "source": p.source.path,
                "action": p.action,
                "reason": p.reason,
                "checks": list(p.checks),
            }
            for p in outcome.plan
        ],
    }
    outcome.findings_by_severity = dict(summary["findings_by_severity"])
    incomplete = [incomplete_plugins(img) for img in doc.get("images") or []]
    outcome.images_incomplete = sum(1 for i in incomplete if i)
    outcome.checks_incomplete = dict(Counter(x.plugin for i in incomplete for x in i))
    code = exit_code(doc, cfg.fail_on)
    db.finish_run(run_id, RUN_COMPLETE, summary=summary)
    try:
        report = build_report_document(db, run_id, trend_runs=cfg.trend_runs)
        outcome.reports = write_run_reports(cfg.reports_dir, run_id, report, list(cfg.formats))
    except ReportWriteError as exc:
        outcome.error = str(exc)
        log.error("run %d: %s", run_id, exc)
        # Results are all stored; only the reports are missing (`vmscan report` can redo
        # them once there is space). The run is marked failed so it is not the baseline.
        db.finish_run(run_id, RUN_FAILED, summary=summary, error=str(exc))
        code = EXIT_IMAGE_ERROR
    outcome.exit_code = code
    expired = db.runs_to_expire(keep_runs=cfg.keep_runs, keep_days=cfg.keep_days)
    if expired:
        db.delete_runs(expired)
        for rid in expired:
            remove_run_dir(cfg.reports_dir, rid)
        outcome.expired_runs = expired
        log.info("retention: removed runs %s", ", ".join(map(str, expired)))


# --------------------------------------------------------------------------------------
# Dry run and metrics


def dry_run(cfg: NightlyConfig) -> list[PlanItem]:
    """What a run would do, without writing anything (the database is read if present)."""
    discovery = discover(cfg)
    for w in discovery.warnings:
        log.warning("%s", w)
    digests = data_digests(cfg)
    if cfg.state_db.exists():
        with StateDB(cfg.state_db, readonly=True) as db:
            return plan(cfg, discovery.sources, db, digests)
    return plan(cfg, discovery.sources, None, digests)


def format_metrics(outcome: NightlyOutcome) -> str:
    """Prometheus text exposition of one nightly run (node_exporter textfile collector)."""
    lines: list[str] = []

    def metric(name: str, help_: str, values: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} gauge")
        for labels, value in values:
            text = str(int(value)) if float(value).is_integer() else f"{value:.3f}"
            lines.append(f"{name}{labels} {text}")

    metric(
        "vmscan_nightly_images_scanned",
        "Images opened and scanned in the last run.",
        [("", outcome.scanned)],
    )
    metric(
        "vmscan_nightly_images_failed",
        "Images that could not be scanned in the last run.",
        [("", outcome.failed)],
    )
    metric(
        "vmscan_nightly_images_skipped_unchanged",
        "Images not opened because they were unchanged (result carried forward).",
        [("", outcome.skipped)],
    )
    metric(
        "vmscan_nightly_images_partial_rescans",
        "Unchanged images re-checked only for changed signatures or advisories.",
        [("", outcome.partial_rescans)],
    )
    names = sorted(set(ALL_CHECKS) | set(outcome.checks_incomplete))
    metric(
        "vmscan_nightly_checks_incomplete",
        "Checks and catalogers that failed or did not complete, per name, in the last run "
        "(one per root; those images are partial and are rescanned next run).",
        [(f'{{check="{_label(n)}"}}', outcome.checks_incomplete.get(n, 0)) for n in names],
    )
    metric(
        "vmscan_nightly_images_incomplete",
        "Images on which at least one selected check did not complete in the last run.",
        [("", outcome.images_incomplete)],
    )
    metric(
        "vmscan_nightly_findings",
        "Findings in the last run by severity.",
        [(f'{{severity="{k}"}}', outcome.findings_by_severity.get(k, 0)) for k in SEVERITY_ORDER],
    )
    metric(
        "vmscan_nightly_run_duration_seconds",
        "Wall time of the last run.",
        [("", outcome.duration_s)],
    )
    metric("vmscan_nightly_exit_code", "Exit code of the last run.", [("", outcome.exit_code)])
    metric(
        "vmscan_nightly_last_run_timestamp_seconds",
        "When the last run ended (Unix time).",
        [("", round(time.time()))],
    )
    if outcome.run_id is not None:
        metric(
            "vmscan_nightly_last_run_id",
            "Id of the last run in the state database.",
            [("", outcome.run_id)],
        )
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    """A Prometheus label value, escaped (text exposition format)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_metrics(path: str | os.PathLike[str], outcome: NightlyOutcome) -> None:
    """Write the textfile atomically (node_exporter must never read half a file)."""
    from vmscan.report.json_out import ReportWriteError, atomic_write_text

    try:
        atomic_write_text(path, format_metrics(outcome))
    except ReportWriteError as exc:
        log.error("metrics: %s", exc)

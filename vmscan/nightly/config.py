"""Nightly configuration: the ``vmscan.toml`` schema, strict loading, errors with line numbers."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmscan.errors import UsageError
from vmscan.nightly.defaults import ALL_CHECKS, IMAGE_EXTENSIONS, REPORT_FORMATS_DEFAULT


class ConfigError(UsageError):
    """The nightly configuration is invalid (exit code 3)."""


# --------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class NightlyConfig:
    """A validated ``vmscan.toml``. Paths are absolute (relative to the config's folder)."""

    path: Path
    image_paths: tuple[str, ...] = ()
    libvirt_xml_dirs: tuple[str, ...] = ()
    # libvirt connections whose domains (running and shut off) are scanned.
    libvirt_uris: tuple[str, ...] = ()
    # Fleet (issue 13): a Dask scheduler ("tcp://HOST:8786", "local:N"); None: this host.
    scheduler: str | None = None
    fleet_wait_workers: float = 120.0
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
    #: After a signature update, files whose clean verdict is younger than this many days
    #: are not streamed again, except those of ``av_recheck_kinds`` (0: every file, always).
    av_recheck_days: float = 7.0
    av_recheck_kinds: tuple[str, ...] = ("executables", "documents", "archives")
    clamd: str | None = None
    license_policy: str | None = None
    jobs: int = 1
    memsize: int | None = None
    timeout: float = 3600.0
    accel: str = "auto"
    #: Appliances sharing one image's content stream (``--stream-appliances``).
    stream_appliances: str = "auto"
    #: Re-read every file even when its cached hash is still valid (``--rehash``).
    rehash: bool = False
    max_per_storage: int = 1
    storage_group: str = "device"
    state_db: Path = Path("state.db")
    reports_dir: Path = Path("reports")
    formats: tuple[str, ...] = REPORT_FORMATS_DEFAULT
    keep_runs: int | None = 30
    keep_days: float | None = None
    trend_runs: int = 14
    fail_on: str | None = "high"

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
        "libvirt": _Key("list[str]", "libvirt_uris"),
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
        "av_recheck_days": _Key("number", "av_recheck_days", minimum=0),
        "av_recheck_kinds": _Key(
            "list[str]", "av_recheck_kinds", ("executables", "documents", "archives")
        ),
        "clamd": _Key("str", "clamd"),
        "license_policy": _Key("str", "license_policy", path=True),
        "rehash": _Key("bool", "rehash"),
    },
    "fleet": {
        "scheduler": _Key("str", "scheduler"),
        "wait_workers": _Key("number", "fleet_wait_workers", minimum=0),
    },
    "limits": {
        "jobs": _Key("int", "jobs", minimum=1),
        "memsize": _Key("int", "memsize", minimum=256),
        "timeout": _Key("number", "timeout", minimum=1),
        "accel": _Key("str", "accel", ("auto", "kvm", "tcg")),
        "stream_appliances": _Key("str", "stream_appliances", ("auto", "1", "2", "3", "4")),
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
    if not any(values.get(k) for k in ("image_paths", "libvirt_xml_dirs", "libvirt_uris")):
        raise ConfigError(
            f"{cfg_path}: nothing to scan: set [images] paths, libvirt_xml_dirs and/or libvirt"
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

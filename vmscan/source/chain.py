"""Vet a disk and every layer of its chain on the host, before qemu opens anything.

For each layer the header is parsed in Python (:mod:`vmscan.source.headers`); every name it
holds must be a plain local path (qemu treats ``proto:`` before the first ``/`` as a
protocol: ``file:``, ``json:``, ``nbd:``, ``fat:`` ...), lie inside an allowed folder once
symlinks are resolved, be a regular file (a block device only inside a folder the user
allowed explicitly) and not be in the chain already. A backing file must have its format
recorded, equal to what vmscan detects from its bytes, so that qemu opens exactly this chain
and probes nothing. ``qemu-img info -f FMT`` then runs only as a cross-check that must
agree, and ``qemu-img check`` refuses corrupt or truncated images; both within the image's
time budget, in their own process group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vmscan.errors import ImageError, ImageTimeoutError, UnsafeImageError
from vmscan.model import DiskLayer, DiskRef, Snapshot
from vmscan.proc import Budget, SubprocessError, SubprocessTimeout, run_bounded
from vmscan.source import headers
from vmscan.source.headers import SPARSE_EXTENTS, SUPPORTED, UNSUPPORTED, Ref, describe_mode
from vmscan.source.kinds import check_source_path
from vmscan.source.snapshots import cross_check as snapshot_cross_check
from vmscan.source.snapshots import read_snapshots

log = logging.getLogger(__name__)

#: Layers in one chain (the image plus its backing files).
MAX_CHAIN = 16
#: Files one layer may consist of (VMDK split into 2 GB extents: 1,000 for 2 TB).
MAX_PARTS = 4096
#: Nesting of VMDK sparse extents that carry their own descriptor.
_MAX_EXTENT_NESTING = 4
QEMU_IMG_INFO_TIMEOUT = 60.0
QEMU_IMG_CHECK_TIMEOUT = 300.0
_MAX_INFO_BYTES = 4 * 1024 * 1024
#: Formats whose metadata ``qemu-img check`` verifies cheaply.
_CHECKABLE = ("qcow2", "vhdx", "vmdk")
_SUFFIX_FORMATS = {
    ".qcow2": "qcow2",
    ".vmdk": "vmdk",
    ".vhd": "vpc",
    ".vhdx": "vhdx",
    ".avhdx": "vhdx",
}
_PROTOCOL = re.compile(r"^([^:/]*):")


def protocol_prefix(name: str) -> str | None:
    """The protocol qemu would see in *name* (``path_has_protocol``: a ``:`` before any ``/``)."""
    m = _PROTOCOL.match(name)
    return m.group(1) + ":" if m else None


def _inside(real: str, folders: list[str]) -> bool:
    return any(real == f or real.startswith(f.rstrip("/") + "/") for f in folders)


@dataclass
class _Vetting:
    """State of one disk's vetting: where files may lie and what is in the chain."""

    given: str
    own_folder: str
    explicit: list[str]
    budget: Budget
    seen: dict[tuple[int, int], str] = field(default_factory=dict)
    parts_seen: int = 0

    @property
    def allowed(self) -> list[str]:
        return [self.own_folder, *self.explicit]

    def refuse(self, message: str) -> UnsafeImageError:
        return UnsafeImageError(f"{self.given}: refused: {message}")

    def resolve_ref(self, ref: Ref, owner: str, owner_label: str) -> str:
        """Vet one name a layer holds; the path qemu will open (relative to *owner*'s folder)."""
        name = ref.name
        what = f"{owner_label}'s {ref.kind} {name!r}"
        if not name:
            raise self.refuse(f"{owner_label} names an empty {ref.kind}")
        proto = protocol_prefix(name)
        if proto is not None:
            raise self.refuse(
                f"{what} uses the protocol prefix {proto!r} (qemu would open it as a "
                f"protocol, not as a file in the folder); vmscan opens only plain local files"
            )
        if ref.kind == "external data file" and not os.path.isabs(name):
            # qemu 7.2 resolves a relative data-file name against its working directory,
            # not the image's folder: what it would open depends on where vmscan runs.
            raise self.refuse(
                f"{what} is relative (qemu resolves it against the current directory, not "
                f"the image's folder); recreate the image with an absolute data-file path"
            )
        path = name if os.path.isabs(name) else os.path.join(os.path.dirname(owner), name)
        real = os.path.realpath(path)
        shown = f" (resolves to {real})" if real != os.path.normpath(path) else ""
        if not _inside(real, self.allowed):
            raise self.refuse(
                f"{what}{shown} lies outside the image's folder {self.own_folder} and the "
                f"folders given with --allow-backing"
            )
        try:
            st = os.stat(real)
        except FileNotFoundError as e:
            raise ImageError(f"{self.given}: {what} does not exist") from e
        except OSError as e:
            raise ImageError(f"{self.given}: {what}: cannot stat: {e.strerror}") from e
        if stat.S_ISBLK(st.st_mode):
            if not _inside(real, self.explicit):
                raise self.refuse(
                    f"{what}{shown} is a block device (allowed only inside a folder given "
                    f"with --allow-backing)"
                )
        elif not stat.S_ISREG(st.st_mode):
            raise self.refuse(f"{what}{shown} {describe_mode(st.st_mode)}, not a regular file")
        key = (st.st_dev, st.st_ino)
        if ref.kind in ("backing file", "VMDK parent") and key in self.seen:
            raise self.refuse(
                f"backing loop: {what}{shown} is already in the chain as {self.seen[key]}"
            )
        return path


def _detect(path: str, given: str, fmt: str | None) -> str:
    """The top layer's format: as given, else detected; unsupported formats are refused."""
    if fmt and normalise_format(fmt) != "raw":
        return normalise_format(fmt)
    found = headers.sniff(path)
    if fmt and found != "luks":
        return normalise_format(fmt)
    if found == "luks":
        # Even as raw: qemu opens a LUKS header as LUKS and the appliance fails to launch.
        # A whole-disk LUKS volume is an encrypted disk, not a format problem (issue 18).
        raise ImageError(
            f"{given}: a whole-disk LUKS encrypted volume: encrypted, no key given: not scanned"
        )
    if found in UNSUPPORTED:
        raise ImageError(
            f"{given}: a {UNSUPPORTED[found]} image: vmscan does not open this format "
            f"(supported: qcow2, vmdk, vhd, vhdx, raw)"
        )
    named = _SUFFIX_FORMATS.get(os.path.splitext(given)[1].lower())
    if named and named != found:
        # e.g. random bytes or a wiped header under a .qcow2 name: never guess.
        raise ImageError(
            f"{given}: named like a {named} image but its header is {found}"
            f"{' (no known image header)' if found == 'raw' else ''}; "
            f"pass --disk-format to scan it anyway"
        )
    return found


#: User-facing aliases of qemu's format names.
FORMAT_ALIASES = {"vhd": "vpc", "img": "raw"}


def normalise_format(fmt: str) -> str:
    """User spelling to qemu's format name; ImageError for an unknown one."""
    f = FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    if f not in SUPPORTED:
        raise ImageError(
            f"unknown disk format {fmt!r} (expected one of qcow2, vmdk, vhd, vhdx, raw)"
        )
    return f


def vet_disk(
    given: str | os.PathLike[str],
    fmt: str | None = None,
    allow_backing: tuple[str, ...] = (),
    budget: Budget | None = None,
) -> DiskRef:
    """Vet one disk and its whole chain; the DiskRef to hand to libguestfs.

    Raises :class:`UnsafeImageError` when a layer names something unsafe,
    :class:`ImageError` when the disk is not a readable image, and
    :class:`ImageTimeoutError` when the budget runs out.
    """
    budget = budget or Budget(None)
    label = os.fspath(given)
    src = check_source_path(label)
    v = _Vetting(
        given=label,
        own_folder=os.path.dirname(src.real),
        explicit=[os.path.realpath(a) for a in allow_backing],
        budget=budget,
    )
    top_fmt = _detect(src.real, label, fmt)
    chain: list[str] = []
    layers: list[tuple[str, str]] = []
    described: list[DiskLayer] = []
    snaps: tuple[Snapshot, ...] = ()
    virtual_size: int | None = None
    for depth, path, layer_fmt, layer, owner in _layers(v, src.real, top_fmt):
        vetted = {os.path.realpath(path)}
        _vet_parts(v, layer.parts, path, owner, vetted, 0)
        # qemu-img info opens the layer's own files (extents, data file: vetted above) but
        # no backing file.
        info = _qemu_img_info(path, layer_fmt, v)
        _cross_check(v, owner, layer, info, vetted)
        layers.append((path, layer_fmt))
        described.append(_describe_layer(path, layer_fmt, vetted, layer, info))
        if depth == 0:
            virtual_size = layer.virtual_size or int(info.get("virtual-size") or 0) or None
            if layer_fmt == "qcow2":
                snaps = read_snapshots(path)
                differs = snapshot_cross_check(snaps, info)
                if differs:
                    raise v.refuse(f"qemu-img disagrees with vmscan about {owner}: {differs}")
        if depth > 0:
            chain.append(os.path.realpath(path))
    # qemu-img check opens the whole backing chain: only once every layer is vetted.
    for lpath, lfmt in layers:
        if lfmt in _CHECKABLE:
            _qemu_img_check(lpath, lfmt, v)
    return DiskRef(
        src.real,
        top_fmt,
        virtual_size,
        tuple(chain),
        given=label if src.real != os.path.abspath(label) else "",
        layers=tuple(dataclasses.replace(d, index=i) for i, d in enumerate(reversed(described))),
        snapshots=snaps,
    )


@dataclass(frozen=True)
class ChainFile:
    """One host file a disk is made of: a layer of the chain, or a file a layer names."""

    path: str  # resolved (realpath)
    layer: int  # 0 for the image itself, 1 for its backing file, ...
    role: str  # "layer" | "VMDK extent" | "external data file" | ...
    format: str  # the layer's format ("" for a part)


def chain_files(
    given: str | os.PathLike[str], fmt: str | None = None, allow_backing: tuple[str, ...] = ()
) -> list[ChainFile]:
    """Every file of a disk at any depth: layers, VMDK extents (nested), qcow2 data files.

    Vetted as :func:`vet_disk` vets them (same refusals) but with no ``qemu-img``: cheap
    enough to run on every image every night (the nightly's identity). Raises what
    :func:`vet_disk` raises, and OSError when a file cannot be read.
    """
    label = os.fspath(given)
    src = check_source_path(label)
    v = _Vetting(
        given=label,
        own_folder=os.path.dirname(src.real),
        explicit=[os.path.realpath(a) for a in allow_backing],
        budget=Budget(None),
    )
    out: list[ChainFile] = []
    listed: set[str] = set()
    start = _detect(src.real, label, fmt)
    for depth, path, layer_fmt, layer, owner in _layers(v, src.real, start):
        real = os.path.realpath(path)
        out.append(ChainFile(real, depth, "layer", layer_fmt))
        listed.add(real)
        parts: list[tuple[str, str]] = []
        _vet_parts(v, layer.parts, path, owner, {real}, 0, found=parts)
        for ppath, kind in parts:
            if ppath not in listed:  # a monolithicSparse VMDK names itself
                listed.add(ppath)
                out.append(ChainFile(ppath, depth, kind, ""))
    return out


def _layers(
    v: _Vetting, path: str, layer_fmt: str
) -> Iterator[tuple[int, str, str, headers.Layer, str]]:
    """(depth, path, format, parsed header, owner) of each layer, the image first.

    The one walk of a chain (the scan's vetting and the nightly's identity): loops and
    depth bounded, each header parsed and refused as a whole, each backing file vetted
    before it is read. Callers vet each layer's parts before asking for the next.
    """
    for depth in range(MAX_CHAIN + 1):
        if depth == MAX_CHAIN:
            raise v.refuse(f"its backing chain is longer than {MAX_CHAIN} files")
        st = os.stat(path)
        v.seen[(st.st_dev, st.st_ino)] = path
        owner = "the image" if depth == 0 else f"backing layer {depth} ({path})"
        layer = headers.parse_layer(path, layer_fmt)
        if layer.refusal:
            named = "; it names " + ", ".join(repr(p.name) for p in layer.parts[:4])
            raise v.refuse(f"{owner}: {layer.refusal}" + (named if layer.parts else ""))
        yield depth, path, layer_fmt, layer, owner
        if layer.backing is None:
            return
        path, layer_fmt = _backing_layer(v, layer.backing, path, owner)


def _backing_layer(v: _Vetting, ref: Ref, path: str, owner: str) -> tuple[str, str]:
    """The vetted backing file *ref* of layer *path*, and its recorded (= detected) format."""
    bpath = v.resolve_ref(ref, path, owner)
    if not ref.recorded_format:
        raise v.refuse(
            f"{owner}'s backing file {ref.name!r} has no recorded format (qemu would "
            f"probe it and follow whatever it finds); record it with "
            f"'qemu-img rebase -u -b {ref.name} -F FORMAT'"
        )
    recorded = FORMAT_ALIASES.get(ref.recorded_format, ref.recorded_format)
    if recorded not in SUPPORTED:
        raise v.refuse(
            f"{owner}'s backing file {ref.name!r} is recorded as {ref.recorded_format!r}, "
            f"a format vmscan does not open"
        )
    found = headers.sniff(bpath)
    if found != recorded:
        raise v.refuse(
            f"{owner}'s backing file {ref.name!r} is recorded as {recorded} but its "
            f"header is {found}" + (f" ({UNSUPPORTED[found]})" if found in UNSUPPORTED else "")
        )
    return bpath, recorded


def _describe_layer(
    path: str, fmt: str, vetted: set[str], layer: headers.Layer, info: dict[str, Any]
) -> DiskLayer:
    """File, format, bytes on the host and date of one layer, for the report."""
    size, mtime = 0, 0.0
    for f in vetted:
        with contextlib.suppress(OSError):
            st = os.stat(f)
            size += st.st_size
            mtime = max(mtime, st.st_mtime)
    when = dt.datetime.fromtimestamp(mtime, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    vsize = layer.virtual_size or int(info.get("virtual-size") or 0) or None
    return DiskLayer(0, os.path.realpath(path), fmt, size, when, vsize)


def _vet_parts(
    v: _Vetting,
    parts: tuple[Ref, ...],
    owner_path: str,
    owner: str,
    vetted: set[str],
    nest: int,
    found: list[tuple[str, str]] | None = None,
) -> None:
    for part in parts:
        v.parts_seen += 1
        if v.parts_seen > MAX_PARTS:
            raise v.refuse(f"it is made of more than {MAX_PARTS} files")
        ppath = v.resolve_ref(part, owner_path, owner)
        vetted.add(os.path.realpath(ppath))
        if found is not None:
            found.append((os.path.realpath(ppath), part.kind))
        if part.extent_type in SPARSE_EXTENTS and os.path.realpath(ppath) != os.path.realpath(
            owner_path
        ):
            if nest >= _MAX_EXTENT_NESTING:
                raise v.refuse(f"{owner}: VMDK extents nest deeper than {_MAX_EXTENT_NESTING}")
            nested = headers.read_sparse_extent(ppath)
            _vet_parts(
                v, tuple(nested), ppath, f"{owner}'s extent {part.name!r}", vetted, nest + 1, found
            )


def _qemu_img_info(path: str, fmt: str, v: _Vetting) -> dict[str, Any]:
    """``qemu-img info -f FMT`` (it opens no backing file), within the budget."""
    timeout = v.budget.cap(QEMU_IMG_INFO_TIMEOUT)
    try:
        proc = run_bounded(
            ["qemu-img", "info", "--output=json", "-f", fmt, "-U", path],
            timeout=timeout,
            max_output=_MAX_INFO_BYTES,
        )
    except SubprocessTimeout as e:
        if v.budget.remaining() <= 0:
            raise ImageTimeoutError(f"{v.given}: time limit reached while vetting it") from e
        raise ImageError(f"{v.given}: {e}") from e
    except SubprocessError as e:
        if "cannot run" in str(e):
            raise ImageError("qemu-img is not installed (Debian package qemu-utils)") from e
        raise ImageError(f"{v.given}: {e}") from e
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = (lines[-1] if lines else f"exit code {proc.returncode}")[:500]
        raise ImageError(f"{path}: not a valid {fmt} image: {detail.removeprefix('qemu-img: ')}")
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise ImageError(f"{path}: qemu-img info gave unreadable output") from e
    if not isinstance(info, dict):
        raise ImageError(f"{path}: qemu-img info gave unreadable output")
    return info


def _cross_check(
    v: _Vetting, owner: str, layer: headers.Layer, info: dict[str, Any], vetted: set[str]
) -> None:
    """qemu-img must see what the host-side parser saw; any difference is a refusal."""
    problems: list[str] = []
    if info.get("format") != layer.format:
        problems.append(f"format {info.get('format')!r} instead of {layer.format!r}")
    want_b = layer.backing.name if layer.backing else None
    got_b = info.get("backing-filename")
    if got_b != want_b:
        problems.append(f"backing file {got_b!r} instead of {want_b!r}")
    if layer.backing and layer.backing.recorded_format:
        got_f = info.get("backing-filename-format")
        if got_f != layer.backing.recorded_format:
            problems.append(
                f"backing format {got_f!r} instead of {layer.backing.recorded_format!r}"
            )
    spec = (info.get("format-specific") or {}).get("data") or {}
    want_d = next((p.name for p in layer.parts if p.kind == "external data file"), None)
    if layer.format == "qcow2" and spec.get("data-file") != want_d:
        problems.append(f"data file {spec.get('data-file')!r} instead of {want_d!r}")
    for ext in spec.get("extents") or []:
        fn = ext.get("filename") if isinstance(ext, dict) else None
        if isinstance(fn, str) and os.path.realpath(fn) not in vetted:
            problems.append(f"extent {fn!r}, which vmscan did not vet")
    if layer.virtual_size is not None and info.get("virtual-size") not in (
        None,
        layer.virtual_size,
    ):
        problems.append(f"virtual size {info.get('virtual-size')} instead of {layer.virtual_size}")
    if problems:
        raise v.refuse(f"qemu-img disagrees with vmscan about {owner}: " + "; ".join(problems))


def _qemu_img_check(path: str, fmt: str, v: _Vetting) -> None:
    """Refuse a truncated or corrupt image up front (reads would silently give zeros)."""
    timeout = v.budget.cap(QEMU_IMG_CHECK_TIMEOUT)
    try:
        proc = run_bounded(
            ["qemu-img", "check", "--output=json", "-f", fmt, "-U", path],
            timeout=timeout,
            max_output=_MAX_INFO_BYTES,
        )
    except SubprocessTimeout as e:
        if v.budget.remaining() <= 0:
            raise ImageTimeoutError(f"{v.given}: time limit reached while checking it") from e
        # A huge image: its metadata is left to the appliance and the per-image limit.
        log.warning("%s: %s; the image is scanned unchecked", path, e)
        return
    except SubprocessError as e:
        raise ImageError(f"{v.given}: {e}") from e
    if proc.returncode in (0, 3, 63):  # clean, leaked clusters only, check unsupported
        return
    try:
        info = json.loads(proc.stdout or b"{}")
    except json.JSONDecodeError:
        info = {}
    lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    first = lines[0].removeprefix("qemu-img: ")[:500] if lines else f"exit code {proc.returncode}"
    count = info.get("corruptions") or info.get("check-errors") if isinstance(info, dict) else 0
    raise ImageError(
        f"{path}: {fmt} image is corrupt or truncated"
        + (f" ({count} errors; first: {first})" if count else f": {first}")
    )

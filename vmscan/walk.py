"""The listing of a mounted guest tree, within bounds a hostile guest cannot stretch.

The manifest walks a root from one listing of every path below ``/``. Normally that is
one ``find0`` call. Two things a guest's owner controls make it unsafe as is:

- **Depth and path length.** The libguestfs daemon reads ``find``'s output into a buffer
  of ``GUESTFS_MAX_CHUNK_SIZE`` (8 KiB, daemon/find.c ``input_to_nul``); a longer path
  makes it reply a second time on a transfer already under way, and the library loses
  the appliance ("file receive cancelled by daemon", then no daemon). A 2,000-level tree
  of 200-byte names did exactly that. Paths past ``PATH_MAX`` cannot be stat'ed by name
  anyway.
- **Entries per folder** and in all: a folder of millions of entries costs thousands of
  ``lstatnslist`` calls and host memory before anything is scanned.

:func:`bound_listing` cuts a ``find0`` listing at :class:`WalkLimits`; what it cut is
returned as :class:`Cut` records (the folder, why, how many entries below it), which the
manifest turns into entries with an error, so the antivirus section is incomplete and
the report names every folder that was not walked: a cut is never a clean negative.

When ``find0`` itself fails (the daemon's 8 KiB limit, or any other failure of the one
call), :func:`folder_walk` lists the tree folder by folder (``ls0`` and ``lstatnslist``,
two calls per folder) and stops at the same limits before it asks for a path the daemon
cannot carry. The stats it took to find the subfolders travel in the listing
(:attr:`Listing.stats`), so the manifest does not stat the same entries again: each
entry is stat'ed once. It is slower (about 10 ms a folder under TCG), so it is only the
fallback.
"""

from __future__ import annotations

import logging
import os
import stat as statmod
import tempfile
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from vmscan.errors import ApplianceDiedError, GuestError
from vmscan.pathenc import encode_path, needs_escape

log = logging.getLogger(__name__)

#: Cap on the find0 listing brought to the host (bytes).
MAX_LISTING_BYTES = 512 * 1024 * 1024
#: lstatnslist batch: well under the 4 MB protocol message limit.
STAT_BATCH = 2000


@dataclass(frozen=True)
class WalkLimits:
    """How far a walk goes. Defaults: far past real systems, short of hostile ones.

    ``max_path`` (bytes, relative to the root) stays below Linux' ``PATH_MAX`` (4,096)
    once the appliance's ``/sysroot/`` prefix is added; ``max_depth`` 256 levels is
    several times the deepest real trees (nested ``node_modules``, Java packages);
    ``max_folder_entries`` 250,000 holds the largest mail spools and caches we have
    seen; ``max_entries`` 5 million is a large file server's root.
    """

    max_depth: int = 256
    max_path: int = 4000
    max_folder_entries: int = 250_000
    max_entries: int = 5_000_000


@dataclass(frozen=True)
class Cut:
    """A folder whose entries (all, or past the first N) were not walked."""

    folder: bytes  # relative to the root, no leading "/"; b"" for the root itself
    why: str
    #: Entries the listing held below the cut (0 when the walk never listed them).
    dropped: int = 0

    @property
    def path(self) -> str:
        """The folder as the report shows it (escaped, absolute)."""
        return encode_path(b"/" + self.folder)

    def reason(self) -> str:
        """Why, and what it cost (the manifest entry's error)."""
        n = self.dropped
        more = f"; {n} {'entry' if n == 1 else 'entries'} below it not walked" if n else ""
        return f"not walked: {self.why}{more}"

    def message(self) -> str:
        """The ``errors[]`` line: the folder and :meth:`reason`."""
        return f"{self.path}: {self.reason()}"


@dataclass
class Listing:
    """Every path the walk will stat (relative, no leading "/"), and what it cut."""

    names: list[bytes]
    cuts: list[Cut] = field(default_factory=list)
    #: "find0", or "folder walk" when find0 could not be used.
    how: str = "find0"
    #: ``lstatns`` dicts the walk already has (the folder walk's), by relative path.
    stats: dict[bytes, dict[str, Any]] = field(default_factory=dict)


def _depth(rel: bytes) -> int:
    return rel.count(b"/") + 1


def _why_too_far(rel: bytes, limits: WalkLimits) -> str | None:
    if _depth(rel) > limits.max_depth:
        return f"deeper than {limits.max_depth} levels"
    if len(rel) + 1 > limits.max_path:
        return f"path longer than {limits.max_path} bytes"
    return None


def bound_listing(names: list[bytes], limits: WalkLimits) -> Listing:
    """*names* (``find0`` order: a folder before what is in it) cut at *limits*.

    A path too deep or too long is cut at its deepest ancestor that is not; a folder's
    entries past ``max_folder_entries`` are dropped with everything below them.
    """
    kept: list[bytes] = []
    # Entry left out -> the cut it counts towards; its descendants count there too.
    dropped: dict[bytes, tuple[bytes, str]] = {}
    per_folder: Counter[bytes] = Counter()
    cut_count: Counter[tuple[bytes, str]] = Counter()
    for rel in names:
        parent = rel.rpartition(b"/")[0]
        key = dropped.get(parent)
        if key is None:
            why = _why_too_far(rel, limits)
            if why is None and len(kept) >= limits.max_entries:
                why = f"the tree holds more than {limits.max_entries} entries"
            if why is None:
                per_folder[parent] += 1
                if per_folder[parent] > limits.max_folder_entries:
                    why = f"holds more than {limits.max_folder_entries} entries"
            if why is None:
                kept.append(rel)
                continue
            key = (parent, why)
        dropped[rel] = key
        cut_count[key] += 1
    cuts = [Cut(folder, why, n) for (folder, why), n in cut_count.items()]
    return Listing(kept, sorted(cuts, key=lambda c: c.folder))


def find0_listing(g: Any, limits: WalkLimits) -> Listing:
    """One ``find0`` of ``/``, cut at *limits* (raises :class:`GuestError` if it fails)."""
    with tempfile.TemporaryDirectory(prefix="vmscan-walk-") as tmp:
        path = os.path.join(tmp, "find0")
        g.find0("/", path)
        too_big = os.path.getsize(path) > MAX_LISTING_BYTES
        with open(path, "rb") as fh:
            names = [n for n in fh.read(MAX_LISTING_BYTES).split(b"\0") if n]
    if too_big:
        # The last name may be cut in the middle: never stat half a name.
        names = names[:-1]
    out = bound_listing(names, limits)
    if too_big:
        out.cuts.append(Cut(b"", f"file listing larger than {MAX_LISTING_BYTES} bytes"))
    return out


def folder_walk(g: Any, limits: WalkLimits) -> Listing:
    """The tree listed folder by folder (two calls each), never past *limits*.

    Names that are not UTF-8 are listed but not descended into (the binding cannot
    pass them; the manifest reads such subtrees with one ``tar_out``). A folder that
    cannot be listed is a cut with the reason; a dead appliance raises.
    """
    out = Listing([], how="folder walk")
    queue: deque[bytes] = deque([b""])
    with tempfile.TemporaryDirectory(prefix="vmscan-walk-") as tmp:
        path = os.path.join(tmp, "ls0")
        while queue:
            folder = queue.popleft()
            gdir = "/" + folder.decode("utf-8")
            try:
                g.ls0(gdir, path)
                with open(path, "rb") as fh:
                    children = sorted(n for n in fh.read(MAX_LISTING_BYTES).split(b"\0") if n)
            except ApplianceDiedError:
                raise
            except GuestError as e:
                out.cuts.append(Cut(folder, f"cannot list: {str(e)[:200]}"))
                continue
            if len(children) > limits.max_folder_entries:
                extra = len(children) - limits.max_folder_entries
                out.cuts.append(
                    Cut(folder, f"holds more than {limits.max_folder_entries} entries", extra)
                )
                children = children[: limits.max_folder_entries]
            rels = [folder + b"/" + c if folder else c for c in children]
            too_far = [(r, _why_too_far(r, limits)) for r in rels]
            cut_here = [(r, w) for r, w in too_far if w is not None]
            if cut_here:
                out.cuts.append(Cut(folder, cut_here[0][1] or "", len(cut_here)))
            rels = [r for r, w in too_far if w is None]
            room = limits.max_entries - len(out.names)
            if len(rels) > room:
                out.cuts.append(
                    Cut(
                        folder,
                        f"the tree holds more than {limits.max_entries} entries",
                        len(rels) - room,
                    )
                )
                rels = rels[: max(room, 0)]
            out.names.extend(rels)
            queue.extend(_subfolders(g, gdir, [r for r in rels if not needs_escape(r)], out))
    return out


def _subfolders(g: Any, gdir: str, rels: list[bytes], out: Listing) -> list[bytes]:
    """The folders among *rels* (children of *gdir*), by ``lstatnslist`` in batches."""
    found: list[bytes] = []
    for i in range(0, len(rels), STAT_BATCH):
        batch = rels[i : i + STAT_BATCH]
        names = [r.rpartition(b"/")[2].decode("utf-8") for r in batch]
        try:
            stats = g.lstatnslist(gdir, names)
        except ApplianceDiedError:
            raise
        except GuestError as e:
            # Listed, so the manifest stats them again and records the failure per entry.
            log.info("%s: cannot stat entries: %s", gdir, e)
            continue
        if len(stats) == len(batch):
            # Kept for the manifest (a short answer: it stats them again itself).
            out.stats.update(zip(batch, stats, strict=True))
        pairs = zip(batch, stats, strict=False)
        found.extend(r for r, st in pairs if statmod.S_ISDIR(st["st_mode"]))
    return found

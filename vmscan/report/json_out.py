"""JSON report writer and the atomic file writer every report goes through."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from vmscan.document import ReportDoc
from vmscan.errors import VmscanError


class ReportWriteError(VmscanError):
    """A report file could not be written (the previous file, if any, is left intact)."""


def _explain(path: Path, exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"cannot write {path}: no space left on the device holding {path.parent} "
            "(the previous file, if any, is unchanged)"
        )
    return f"cannot write {path}: {exc.strerror or exc}"


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], *, mode: int = 0o644) -> Iterator[IO[str]]:
    """Text file written to a temp file in the same folder, fsynced, then renamed over."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise ReportWriteError(_explain(target, exc)) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fp:
            yield fp
            fp.flush()
            os.fsync(fp.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise ReportWriteError(_explain(target, exc)) from exc
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_writer(path) as fp:
        fp.write(text)


def write_json(doc: ReportDoc | Mapping[str, Any], fp: IO[str]) -> None:
    """Canonical JSON: sorted keys, two-space indent, UTF-8 kept readable."""
    data = doc.to_json() if isinstance(doc, ReportDoc) else doc
    json.dump(data, fp, indent=2, sort_keys=True, ensure_ascii=False)
    fp.write("\n")

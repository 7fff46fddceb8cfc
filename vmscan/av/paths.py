"""Guest path helpers for the antivirus scan: the shared escaping and tar exclude patterns."""

from __future__ import annotations

from vmscan.pathenc import decode_path, encode_path

__all__ = ["decode_path", "encode_path", "tar_exclude_pattern"]


def tar_exclude_pattern(raw: bytes) -> str | None:
    """GNU tar ``-X`` line excluding exactly the member ``./<raw>`` (raw: path without "/").

    The libguestfs daemon writes the excludes to a file for ``tar -X`` (daemon/tar.c);
    exclude patterns are globs there, unanchored but matched against whole names, so
    ``./`` anchors them and ``*``, ``?``, ``[`` and ``\\`` are escaped with a backslash.
    A name with a newline cannot be written in a line-based list, and the libguestfs
    binding only passes UTF-8 strings: None for those (they are skipped on the host).
    """
    if b"\n" in raw or b"\r" in raw:
        return None
    out = bytearray(b"./")
    for b in raw:
        if b in b"*?[\\":
            out.append(0x5C)
        out.append(b)
    try:
        return bytes(out).decode("utf-8")
    except UnicodeDecodeError:
        return None

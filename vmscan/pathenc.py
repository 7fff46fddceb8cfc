"""Reversible JSON-safe escaping of guest file names that are not valid UTF-8.

Guest paths are bytes. Valid UTF-8 is kept as is, except that a backslash is doubled;
each byte that is not part of valid UTF-8 becomes the four characters ``\\xHH``.
``decode_path(encode_path(b)) == b`` for every byte string.
"""

from __future__ import annotations

import re

_ESCAPED = re.compile(r"\\(\\|x[0-9a-fA-F]{2})")


def encode_path(raw: bytes) -> str:
    """Guest path bytes to a printable, reversible str."""
    text = raw.decode("utf-8", errors="surrogateescape")
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.append(ch)
    return "".join(out)


def decode_path(text: str) -> bytes:
    """Inverse of :func:`encode_path`."""
    out = bytearray()
    pos = 0
    for m in _ESCAPED.finditer(text):
        out += text[pos : m.start()].encode("utf-8")
        tok = m.group(1)
        out += b"\\" if tok == "\\" else bytes([int(tok[1:], 16)])
        pos = m.end()
    out += text[pos:].encode("utf-8")
    return bytes(out)


def needs_escape(raw: bytes) -> bool:
    """True when a name cannot be passed to libguestfs as a plain UTF-8 string."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False

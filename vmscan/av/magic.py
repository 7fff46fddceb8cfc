"""File kinds from magic bytes (never from names): executables, documents, archives."""

from __future__ import annotations

#: Bytes of the head needed to classify (tar's "ustar" sits at offset 257).
HEAD_SIZE = 512
KINDS = ("executables", "documents", "archives")

_EXEC = (
    b"\x7fELF",
    b"MZ",
    b"#!",
    b"\xfe\xed\xfa\xce",
    b"\xfe\xed\xfa\xcf",
    b"\xce\xfa\xed\xfe",
    b"\xcf\xfa\xed\xfe",
    b"\xca\xfe\xba\xbe",  # Mach-O fat binary or Java class: both executable code
    b"dex\n",
    b"\x00asm",
)
_DOCS = (
    b"%PDF-",
    b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",  # OLE2: .doc/.xls/.msi
    b"{\\rtf",
    b"%!PS",
)
_ARCHIVES = (
    b"PK\x03\x04",
    b"PK\x05\x06",
    b"PK\x07\x08",
    b"7z\xbc\xaf\x27\x1c",
    b"Rar!\x1a\x07",
    b"\x1f\x8b",
    b"BZh",
    b"\xfd7zXZ\x00",
    b"\x28\xb5\x2f\xfd",
    b"\x5d\x00\x00",  # lzma-alone
    b"MSCF",
    b"ISc(",
    b"!<arch>\n",
    b"070701",
    b"070702",
    b"070707",
    b"\xc7\x71",
    b"\xed\xab\xee\xdb",  # rpm
    b"xar!",
    b"LZIP",
)


def classify(head: bytes) -> frozenset[str]:
    """Kinds of a file from its first bytes (a file may be several, e.g. an OOXML zip)."""
    kinds: set[str] = set()
    if head.startswith(_EXEC):
        kinds.add("executables")
    if head.startswith(_DOCS):
        kinds.add("documents")
    if head.startswith(_ARCHIVES) or head[257:262] == b"ustar":
        kinds.add("archives")
        # Office Open XML / OpenDocument are zips whose first member says what they are.
        if head.startswith(b"PK\x03\x04") and (
            b"[Content_Types].xml" in head[:200]
            or b"mimetypeapplication/vnd" in head[:200]
            or b"word/" in head[:200]
            or b"xl/" in head[:200]
            or b"ppt/" in head[:200]
        ):
            kinds.add("documents")
    return frozenset(kinds)


def parse_scope(scope: str | None) -> frozenset[str] | None:
    """``--av-scope`` value to a set of kinds; None means every regular file."""
    if not scope or scope.strip() == "all":
        return None
    parts = {p.strip() for p in scope.split(",") if p.strip()}
    if "all" in parts:
        return None
    bad = parts - set(KINDS)
    if bad:
        raise ValueError(f"unknown --av-scope value(s): {', '.join(sorted(bad))}")
    return frozenset(parts)


def in_scope(kinds: frozenset[str], scope: frozenset[str] | None) -> bool:
    return scope is None or bool(kinds & scope)

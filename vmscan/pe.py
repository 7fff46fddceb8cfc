"""Facts about Windows PE executables (machine, version resource, Authenticode, imphash)."""

from __future__ import annotations

import logging
import struct
from dataclasses import asdict, dataclass
from typing import Any

import pefile

log = logging.getLogger(__name__)

#: Largest PE parsed (pefile keeps the whole image in memory).
MAX_PE_SIZE = 256 * 1024 * 1024

_MACHINES = {
    0x014C: "i386",
    0x8664: "AMD64",
    0xAA64: "ARM64",
    0x01C4: "ARMNT",
    0x01C0: "ARM",
    0x0200: "IA64",
    0xA641: "ARM64EC",
    0xA64E: "ARM64X",
}
_VERSION_KEYS = {
    "CompanyName": "company_name",
    "ProductName": "product_name",
    "FileVersion": "file_version",
    "ProductVersion": "product_version",
    "FileDescription": "file_description",
    "OriginalFilename": "original_filename",
    "LegalCopyright": "legal_copyright",
}
_MAX_VALUE = 512


@dataclass(frozen=True)
class PEInfo:
    """What vmscan keeps of one PE file for the licence and migration checks."""

    machine: str
    is_dll: bool = False
    is_64bit: bool = False
    subsystem: int = 0
    company_name: str | None = None
    product_name: str | None = None
    file_version: str | None = None
    product_version: str | None = None
    file_description: str | None = None
    original_filename: str | None = None
    legal_copyright: str | None = None
    #: Fixed part of the version resource ("7.3.4.500"), when there is one.
    fixed_file_version: str | None = None
    signed: bool = False
    imphash: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_pe(head: bytes) -> bool:
    """Cheap test on the first bytes: an MZ header pointing at a PE signature."""
    if len(head) < 0x40 or not head.startswith(b"MZ"):
        return False
    off = int.from_bytes(head[0x3C:0x40], "little")
    if off + 4 > len(head):
        # The PE header lies past the head we have: let pefile decide later.
        return True
    return head[off : off + 4] == b"PE\0\0"


def _clean(value: bytes | str) -> str:
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
    return text.replace("\x00", "").strip()[:_MAX_VALUE]


def _version_strings(pe: pefile.PE) -> dict[str, str]:
    found: dict[str, str] = {}
    for fileinfo in getattr(pe, "FileInfo", None) or []:
        # pefile returns a list of lists (one per VS_VERSIONINFO) in recent versions.
        entries = fileinfo if isinstance(fileinfo, list) else [fileinfo]
        for entry in entries:
            if getattr(entry, "Key", b"") not in (b"StringFileInfo", "StringFileInfo"):
                continue
            for table in getattr(entry, "StringTable", []):
                for key, value in table.entries.items():
                    name = _VERSION_KEYS.get(_clean(key))
                    if name and name not in found and _clean(value):
                        found[name] = _clean(value)
    return found


def _fixed_version(pe: pefile.PE) -> str | None:
    fixed = getattr(pe, "VS_FIXEDFILEINFO", None)
    if not fixed:
        return None
    f = fixed[0]
    ms, ls = f.FileVersionMS, f.FileVersionLS
    return f"{ms >> 16}.{ms & 0xFFFF}.{ls >> 16}.{ls & 0xFFFF}"


def pe_info(data: bytes) -> PEInfo | None:
    """Parse a PE image; None when *data* is not a PE pefile can read (a note, not a failure)."""
    if len(data) > MAX_PE_SIZE or not data.startswith(b"MZ"):
        return None
    try:
        pe = pefile.PE(data=data, fast_load=True)
    except (pefile.PEFormatError, ValueError, IndexError, struct.error) as e:
        log.debug("not a readable PE: %s", e)
        return None
    try:
        machine_id = pe.FILE_HEADER.Machine
        machine = _MACHINES.get(machine_id, f"0x{machine_id:04x}")
        sec_idx = pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_SECURITY"]
        dirs = pe.OPTIONAL_HEADER.DATA_DIRECTORY
        signed = (
            len(dirs) > sec_idx and dirs[sec_idx].VirtualAddress != 0 and dirs[sec_idx].Size != 0
        )
        version: dict[str, str] = {}
        fixed = None
        imphash = ""
        try:
            pe.parse_data_directories(
                directories=[
                    pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_IMPORT"],
                    pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_RESOURCE"],
                ]
            )
            version = _version_strings(pe)
            fixed = _fixed_version(pe)
            imphash = pe.get_imphash() or ""
        except Exception as e:
            log.debug("PE directories unreadable: %s", e)
        return PEInfo(
            machine=machine,
            is_dll=bool(pe.FILE_HEADER.Characteristics & 0x2000),
            is_64bit=pe.OPTIONAL_HEADER.Magic == 0x20B,
            subsystem=int(pe.OPTIONAL_HEADER.Subsystem),
            fixed_file_version=fixed,
            signed=bool(signed),
            imphash=imphash,
            **version,
        )
    except Exception as e:
        log.debug("PE unreadable: %s", e)
        return None
    finally:
        pe.close()


#: Names that may hold PE images, for :func:`collect` (the antivirus check finds PE files by
#: their magic bytes instead, since it reads every file anyway).
PE_SUFFIXES = (
    ".exe",
    ".dll",
    ".sys",
    ".ocx",
    ".cpl",
    ".scr",
    ".drv",
    ".efi",
    ".com",
    ".mui",
    ".ax",
    ".acm",
    ".tlb",
    ".winmd",
)

"""Architecture: 32/64-bit OS and executables (16-bit DOS/Win16 programs included)."""

from __future__ import annotations

import contextlib
import stat as statmod

from vmscan.checks.migration.binaries import (
    HEAD_SIZE,
    ExeKind,
    classify_executable,
    pe_header_offset,
)
from vmscan.checks.migration.common import (
    DEFAULT_MAX_HEADS,
    EXEC_DIRS,
    PE_EXTS,
    PRIORITY_RE,
    SAMPLE,
    SO_RE,
    Run,
    ci_path,
)
from vmscan.checks.migration.rules import ARCH_16BIT_EXE, ARCH_32BIT_EXE, ARCH_32BIT_OS, arch_bits
from vmscan.errors import VmscanError
from vmscan.model import FileEntry


def exe_candidate(e: FileEntry, windows: bool) -> bool:
    """Is *e* an executable whose header the architecture step reads?"""
    # Modes with file-type bits must say "regular"; bare permission bits are accepted.
    if e.size < 64 or (statmod.S_IFMT(e.mode) and not statmod.S_ISREG(e.mode)):
        return False
    p = e.path
    if windows:
        # The OS's own files (System32, SysWOW64, WinSxS) are what WOW64 is for.
        low = p.lower()
        return low.endswith(PE_EXTS) and not low.startswith(("/windows/", "/winnt/"))
    parts = p.split("/")
    in_exec_dir = any(d in EXEC_DIRS for d in parts[:-1]) or p.startswith("/opt/")
    return bool((in_exec_dir and e.mode & 0o111) or (in_exec_dir and SO_RE.search(parts[-1])))


def _exe_candidates(r: Run, windows: bool) -> list[str]:
    out = [e.path for e in r.ctx.manifest if exe_candidate(e, windows)]
    out.sort(key=lambda p: (0 if PRIORITY_RE.search(p) else 1, p))
    return out


def _exe_kind(r: Run, path: str) -> ExeKind | None:
    # The view answers from the root's content stream when the file passed through it.
    try:
        head = r.fs.read_head(path, HEAD_SIZE)
    except VmscanError:
        return None
    off = pe_header_offset(head)
    if off is not None and len(head) < off + 256 <= 65536:
        with contextlib.suppress(VmscanError):
            head = r.fs.read_head(path, off + 256)
    return classify_executable(head, path)


def arch(r: Run) -> None:
    os_info = r.ctx.root.os
    windows = r.facts["os_kind"] == "windows"
    arch = os_info.arch or "unknown"
    bits = arch_bits(arch)
    source = "inspection"
    if bits == 0:
        probes = (
            ["/Windows/System32/kernel32.dll"]
            if windows
            else ["/usr/bin/ls", "/bin/ls", "/usr/bin/env", "/bin/busybox", "/bin/sh"]
        )
        for probe in probes:
            p = ci_path(r.fs, probe) if windows else probe
            if p and r.fs.is_file(p):
                k = _exe_kind(r, p)
                if k and k.bits in (32, 64):
                    arch, bits, source = k.machine, k.bits, f"header of {p}"
                    break
    r.facts["arch"] = arch
    r.facts["arch_bits"] = bits
    r.facts["arch_source"] = source
    if bits == 32:
        r.add(ARCH_32BIT_OS, "os", arch, title=f"32-bit operating system ({arch})", arch=arch)

    cands = _exe_candidates(r, windows)
    cap = int(r.ctx.options.get("migration_max_heads", DEFAULT_MAX_HEADS))
    examined = cands[:cap]
    counts: dict[str, int] = {}
    exe32: list[str] = []
    exe16: list[str] = []
    unreadable = 0
    for path in examined:
        k = _exe_kind(r, path)
        if k is None:
            unreadable += 1
            continue
        label = f"{k.kind}{k.bits or ''}" + (f"-{k.note}" if k.note == "dotnet" else "")
        counts[label] = counts.get(label, 0) + 1
        # Only the OS's native format counts: a PE file on Linux is data (or Wine's).
        native = "pe" if windows else "elf"
        if k.bits == 16 and windows:
            exe16.append(path)
        elif k.bits == 32 and k.kind == native and bits == 64:
            exe32.append(path)
    r.facts["executables"] = {
        "candidates": len(cands),
        "examined": len(examined),
        "capped": len(cands) > len(examined),
        "cap": cap,
        "unreadable": unreadable,
        # Kept for the report's readers: heads are read through the view (from the stream
        # when the file passed through it); the unwritten "file_heads" section is gone.
        "headers_from": "read_head",
        "kinds": dict(sorted(counts.items())),
        "count_32bit": len(exe32),
        "sample_32bit": exe32[:SAMPLE],
        "count_16bit": len(exe16),
        "sample_16bit": exe16[:SAMPLE],
        "scope": (
            "*.exe/*.dll/*.com outside the Windows folder (PE machine)"
            if windows
            else "files with exec bits and *.so in bin/sbin/lib/libexec dirs and /opt (ELF class)"
        ),
    }
    if not r.ctx.manifest:
        r.facts["executables"]["note"] = "no manifest: executables not examined"
    capped = " (sample capped)" if len(cands) > len(examined) else ""
    if exe32:
        r.add(
            ARCH_32BIT_EXE,
            "executables",
            "32bit",
            title=f"{len(exe32)} 32-bit executables on a 64-bit system{capped}",
            count=len(exe32),
            sample=exe32[:SAMPLE],
            file=exe32[0],
            text=f"{len(exe32)} of {len(examined)} examined executables are 32-bit",
        )
    if exe16:
        r.add(
            ARCH_16BIT_EXE,
            "executables",
            "16bit",
            title=f"{len(exe16)} 16-bit DOS/Windows executables{capped}",
            count=len(exe16),
            sample=exe16[:SAMPLE],
            file=exe16[0],
            text=f"{len(exe16)} of {len(examined)} examined executables are 16-bit",
        )

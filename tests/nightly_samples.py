"""Hand-made run results and a stand-in scanner for nightly/state/diff/report tests.

The stand-in reads "images" that are small JSON files describing the guest (packages,
findings, executables); it never starts an appliance. The real scanner is exercised in
test_nightly_guest.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmscan import SCHEMA_VERSION, __version__
from vmscan.model import (
    DiskRef,
    FileEntry,
    Finding,
    ImageResult,
    ImageStatus,
    OSInfo,
    Package,
    PluginStatus,
    RootResult,
    ScanResult,
)

REPO_SIGNATURES = Path(__file__).resolve().parent.parent / "signatures"
HOSTILE_HOSTNAME = "<script>window.__xss=1</script>"
HOSTILE_PATH = '/srv/"><img src=x onerror=window.__xss=2>.bin'


def write_guest(path: Path, **spec: Any) -> Path:
    """A fake image: JSON describing the guest, padded so it looks like a small raw disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(spec, sort_keys=True)
    path.write_text(text + "\n" + " " * (4096 - len(text) % 4096))
    return path


def finding(check: str, rule: str, severity: str, target: str, title: str = "") -> dict[str, Any]:
    """A finding spec (fingerprint derived from check, rule and target)."""
    return {
        "check": check,
        "rule_id": rule,
        "severity": severity,
        "target": target,
        "title": title or f"{rule} on {target}",
        "fingerprint": f"{check}:{rule}:{target}",
    }


def image_from_spec(source: str, spec: dict[str, Any], checks: tuple[str, ...]) -> ImageResult:
    """The ImageResult a scanner would give for the guest described by ``spec``."""
    if spec.get("error"):
        return ImageResult(source=source, status=ImageStatus.ERROR, errors=[spec["error"]])
    os_info = OSInfo(
        type=spec.get("os_type", "linux"),
        distro=spec.get("distro", "debian"),
        product_name=spec.get("product", "Debian GNU/Linux 12"),
        major_version=int(spec.get("major", 12)),
        arch="x86_64",
        hostname=spec.get("hostname", "vm"),
        package_format=spec.get("package_format", "deb"),
        extra=dict(spec.get("os_extra") or {}),
    )
    root = RootResult(device="/dev/sda1", os=os_info)
    root.packages = [
        Package(name=n, version=v, arch="amd64", found_by="os/dpkg")
        for n, v in spec.get("packages", [])
    ]
    root.findings = [Finding(**f) for f in spec.get("findings", []) if f["check"] in checks]
    if "migration" in checks and spec.get("migration"):
        root.sections["migration"] = {"verdict": spec["migration"]}
    manifest = [
        FileEntry(
            device="/dev/sda1", path=p, size=10, mode=0o100755, uid=0, gid=0, mtime=0, sha256=h
        )
        for p, h in spec.get("exec", [])
    ]
    img = ImageResult(
        source=source,
        disks=[DiskRef(path=source, format="raw")],
        status=ImageStatus.OK,
        roots=[root],
        manifest=manifest,
        started_at="2026-01-01T00:00:00Z",
        finished_at=spec.get("finished_at", "2026-01-01T00:00:01Z"),
    )
    if "antivirus" in checks:
        img.sections["antivirus"] = {"files_scanned": len(manifest)}
        if spec.get("av_engine"):
            # What the antivirus check records per root (engine = clamd's VERSION reply).
            root.sections["antivirus"] = {
                "status": "complete",
                "engine": spec["av_engine"],
                "database_digest": spec.get("av_digest", "d1"),
            }
    return img


@dataclass
class FakeScanner:
    """scan_fn stand-in: counts the images it is asked to open."""

    opened: list[str] = field(default_factory=list)
    calls: list[tuple[list[str], tuple[str, ...], int]] = field(default_factory=list)
    # The antivirus scope each call was given ("all" or kinds of a bounded re-check).
    scopes: list[str] = field(default_factory=list)
    # The storage of each source and the per-storage limit each call was given.
    storage: list[tuple[dict[str, str], int]] = field(default_factory=list)
    # Called in the middle of the batch, after the first image's callback (faults).
    after_first: Callable[[], None] | None = None
    before_each: Callable[[str], None] | None = None
    # Checks that fail on every image this time (as a dead clamd makes antivirus fail).
    failing: tuple[str, ...] = ()

    def __call__(
        self,
        sources: list[str],
        opts: Any,
        on_image_done: Callable[[ImageResult], None] | None = None,
    ) -> ScanResult:
        self.calls.append((list(sources), tuple(opts.checks), int(opts.jobs)))
        self.scopes.append(str(opts.plugin_options.get("av_scope") or ""))
        self.storage.append((dict(opts.storage), int(opts.max_per_storage)))
        result = ScanResult(
            schema_version=SCHEMA_VERSION,
            vmscan_version=__version__,
            started_at="2026-01-01T00:00:00Z",
        )
        for i, src in enumerate(sources):
            if self.before_each:
                self.before_each(src)
            self.opened.append(src)
            try:
                spec = json.loads(Path(src).read_text().strip() or "{}")
            except (OSError, ValueError) as exc:
                spec = {"error": f"cannot open: {exc}"}
            img = image_from_spec(src, spec, tuple(opts.checks))
            for check in self.failing:
                if check in opts.checks and img.roots:
                    img.roots[0].plugins.append(
                        PluginStatus(check, "failed", f"{check}: engine unavailable (test)")
                    )
            result.images.append(img)
            if on_image_done:
                on_image_done(img)
            if i == 0 and self.after_first:
                self.after_first()
        return result


def write_config(tmp: Path, images: str, *, extra: str = "") -> Path:
    """A nightly config over ``images`` (a glob) with state and reports under ``tmp``."""
    lines = [
        'fail_on = "high"',
        "[images]",
        f'paths = ["{images}"]',
        "[scan]",
        'checks = ["antivirus", "patch", "migration"]',
        f'signatures_dir = "{tmp / "sigs"}"',
        "[limits]",
        "jobs = 2",
        "max_per_storage = 2",
        "[state]",
        f'database = "{tmp / "state" / "vmscan.db"}"',
        "[reports]",
        f'dir = "{tmp / "reports"}"',
        'formats = ["json", "html", "sarif"]',
    ]
    text = "\n".join(lines) + "\n" + extra
    path = tmp / "vmscan.toml"
    path.write_text(text)
    (tmp / "sigs" / "clamav").mkdir(parents=True, exist_ok=True)
    (tmp / "sigs" / "advisories").mkdir(parents=True, exist_ok=True)
    sig = tmp / "sigs" / "clamav" / "local.hdb"
    if not sig.exists():
        sig.write_text("44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-Signature\n")
    # Without its end-of-life table the patch check is (rightly) partial: give it the real one.
    eol = tmp / "sigs" / "eol.json"
    if not eol.exists():
        eol.write_bytes((REPO_SIGNATURES / "eol.json").read_bytes())
    return path


def sample_run(run_id: int, images: list[dict[str, Any]]) -> dict[str, Any]:
    """A run document around image dicts."""
    return {
        "schema_version": SCHEMA_VERSION,
        "vmscan_version": __version__,
        "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:10:00Z",
        "images": images,
        "sections": {"run": {"id": run_id, "status": "complete"}},
    }


def sample_image(source: str, **spec: Any) -> dict[str, Any]:
    """An image dict (canonical JSON) from a guest spec."""
    from vmscan.model import to_jsonable

    checks = ("antivirus", "patch", "license", "migration")
    result: dict[str, Any] = to_jsonable(image_from_spec(source, spec, checks))
    return result


def env_pid_dead() -> int:
    """A pid that is certainly not running (a reaped child's)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid

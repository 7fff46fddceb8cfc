"""libvirt:NAME end to end with a real libvirtd: a running TCG domain read through a pull-mode
backup (still running afterwards, same live XML and disk chain, no job left), a shut-off
domain read from its files (unchanged), and an unknown domain as a clear per-image error.

The daemons are started here when none runs (there is no systemd in CI) and stopped at the
end. The domains need no OS: SeaBIOS finds nothing to boot and the VM keeps running.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fixtures
from fixtures.specs.debian_lvm import EICAR_PATH
from vmscan.cli import main
from vmscan.manifest import sha256_file

pytestmark = pytest.mark.guest
URI = "qemu:///system"
libvirt = pytest.importorskip("libvirt", reason="python3-libvirt is not installed")

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>"""


def _pid(path: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(Path(path).read_text().strip())
        os.kill(pid, 0)
        return pid
    return None


@pytest.fixture(scope="module")
def conn() -> Iterator[Any]:
    """A connection to qemu:///system, with virtlogd and libvirtd started if need be."""
    if os.geteuid() != 0:
        pytest.skip("qemu:///system needs root here")
    if not shutil.which("libvirtd"):
        pytest.skip("libvirtd is not installed (Debian package libvirt-daemon-system)")
    started: list[int] = []
    for daemon, pidfile in (("virtlogd", "/run/virtlogd.pid"), ("libvirtd", "/run/libvirtd.pid")):
        if _pid(pidfile) is None:
            subprocess.run([daemon, "-d"], check=True, timeout=60)
            for _ in range(200):
                if (pid := _pid(pidfile)) is not None:
                    started.append(pid)
                    break
                time.sleep(0.1)
    c = None
    for _ in range(100):
        try:
            c = libvirt.open(URI)
            break
        except libvirt.libvirtError:
            time.sleep(0.2)
    assert c is not None, "libvirtd did not answer"
    yield c
    c.close()
    for pid in reversed(started):  # only what this module started
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if _pid(f"/proc/{pid}/stat") is None and not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)


def _chain(disk: Path) -> str:
    return subprocess.run(
        ["qemu-img", "info", "-U", "--backing-chain", str(disk)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.fixture(scope="module")
def domains(conn: Any) -> Iterator[dict[str, Any]]:
    """A running transient domain and a defined, shut-off one, each on a copy of debian-lvm."""
    folder = Path(tempfile.mkdtemp(prefix="vmscan-domains-", dir="/var/tmp"))
    os.chmod(folder, 0o755)  # libvirt-qemu must reach the disks
    base = fixtures.build("debian-lvm", "qcow2")
    tag = uuid.uuid4().hex[:8]
    running_disk, off_disk = folder / "running.qcow2", folder / "off.qcow2"
    shutil.copyfile(base, running_disk)
    shutil.copyfile(base, off_disk)
    running = conn.createXML(DOMAIN_XML.format(name=f"vmscan-run-{tag}", disk=running_disk), 0)
    off = conn.defineXML(DOMAIN_XML.format(name=f"vmscan-off-{tag}", disk=off_disk))
    try:
        yield {
            "folder": folder,
            "running": running,
            "off": off,
            "running_disk": running_disk,
            "off_disk": off_disk,
        }
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            running.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            off.undefine()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def scan(domains: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    running, off = domains["running"], domains["off"]
    before = {
        "xml": running.XMLDesc(0),
        "chain": _chain(domains["running_disk"]),
        "off_hash": sha256_file(domains["off_disk"]),
        "off_chain": _chain(domains["off_disk"]),
    }
    out = tmp_path_factory.mktemp("domains") / "report.json"
    tmp_before = set(os.listdir("/tmp"))
    rc = main(
        [
            "scan",
            "-q",
            "--manifest",
            "--checks",
            "none",
            "-j",
            "2",
            "--connect",
            URI,
            "-o",
            str(out),
            f"libvirt:{running.name()}",
            f"libvirt:{off.name()}",
            "libvirt:vmscan-no-such-domain",
        ]
    )
    after = {
        "xml": running.XMLDesc(0),
        "chain": _chain(domains["running_disk"]),
        "off_hash": sha256_file(domains["off_disk"]),
        "off_chain": _chain(domains["off_disk"]),
    }
    return {
        "rc": rc,
        "report": json.loads(out.read_text()),
        "before": before,
        "after": after,
        "active": running.isActive(),
        "job": running.jobInfo()[0],
        "new_tmp": set(os.listdir("/tmp")) - tmp_before,
    }


def test_running_domain_scanned_through_backup(scan: dict[str, Any]) -> None:
    img = scan["report"]["images"][0]
    assert img["status"] in ("ok", "partial"), img["errors"]
    (disk,) = img["disks"]
    assert disk["point"]["kind"] == "backup"
    # No guest agent in this VM: the view is a crash-consistent point in time.
    assert disk["point"]["consistency"] == "crash-consistent"
    assert "guest agent" in disk["point"]["note"]
    assert EICAR_PATH in {e["path"] for e in img["manifest"]}
    assert [la["format"] for la in disk["layers"]] == ["qcow2"]


def test_running_domain_untouched(scan: dict[str, Any]) -> None:
    assert scan["active"]
    assert scan["after"]["xml"] == scan["before"]["xml"]
    assert scan["after"]["chain"] == scan["before"]["chain"]
    assert scan["job"] == libvirt.VIR_DOMAIN_JOB_NONE  # the backup job was ended
    assert not [d for d in scan["new_tmp"] if d.startswith("vmscan-backup-")]


def test_shut_off_domain_read_from_files(scan: dict[str, Any]) -> None:
    img = scan["report"]["images"][1]
    assert img["status"] in ("ok", "partial"), img["errors"]
    (disk,) = img["disks"]
    assert disk["point"]["consistency"] == "offline"
    assert EICAR_PATH in {e["path"] for e in img["manifest"]}
    assert scan["after"]["off_hash"] == scan["before"]["off_hash"]
    assert scan["after"]["off_chain"] == scan["before"]["off_chain"]


def test_unknown_domain_is_a_clear_error(scan: dict[str, Any]) -> None:
    img = scan["report"]["images"][2]
    assert img["status"] == "error"
    assert img["errors"] == [
        f"libvirt:vmscan-no-such-domain: no domain named 'vmscan-no-such-domain' on {URI}"
    ]
    assert scan["rc"] == 2


def test_backup_job_ended_when_the_worker_is_killed(domains: dict[str, Any]) -> None:
    """SIGKILL after the backup started: the guardian ends the job, the VM runs on."""
    from vmscan.proc import Budget
    from vmscan.source.domain import open_domain

    running = domains["running"]
    xml_before = running.XMLDesc(0)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the "worker": start the backup, say so, wait to be killed
        try:
            os.close(r)
            with open_domain(f"libvirt:{running.name()}", URI, None, (), Budget(120)) as (_, v):
                os.write(w, v[0].nbd_socket.encode() + b"\n")
                time.sleep(600)
        finally:
            os._exit(1)
    os.close(w)
    sock = os.read(r, 4096).decode().strip()
    os.close(r)
    assert sock and os.path.exists(sock)
    assert running.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    for _ in range(300):
        if running.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:
            break
        time.sleep(0.1)
    assert running.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE
    for _ in range(100):  # the guardian removes the socket folder right after
        if not os.path.exists(os.path.dirname(sock)):
            break
        time.sleep(0.1)
    assert not os.path.exists(os.path.dirname(sock))
    assert running.isActive()
    assert running.XMLDesc(0) == xml_before


def test_discover_domains(domains: dict[str, Any]) -> None:
    """The nightly's discovery: running and shut-off domains of a connection; a bad URI warns."""
    from vmscan.source.domain import discover_domains

    found, warnings = discover_domains([URI, "test+bogus:///nowhere"])
    states = {d.name: d.running for d in found if d.uri == URI}
    assert states[domains["running"].name()] is True
    assert states[domains["off"].name()] is False
    assert {d.label for d in found} >= {f"libvirt:{domains['off'].name()}"}
    assert len(warnings) == 1 and warnings[0].startswith("test+bogus:///nowhere: cannot connect")


def test_nightly_discovers_and_scans_the_domains_of_a_connection(
    domains: dict[str, Any], tmp_path: Path
) -> None:
    """``[images] libvirt = [URI]``: both domains found; night 1 scans both (the running one
    through a backup), night 2 carries the shut-off one (its files did not change) and scans
    the running one again (a running VM is never "unchanged"); the VM keeps running."""
    from vmscan.nightly import load_config, run_nightly

    running, off = domains["running"], domains["off"]
    xml_before = running.XMLDesc(0)
    cfg_path = tmp_path / "vmscan.toml"
    cfg_path.write_text(
        "\n".join(
            [
                'fail_on = "none"',
                "[images]",
                f'libvirt = ["{URI}"]',
                "[scan]",
                "checks = []",
                "[limits]",
                "jobs = 2",
                "[state]",
                f'database = "{tmp_path / "state.db"}"',
                "[reports]",
                f'dir = "{tmp_path / "reports"}"',
                'formats = ["json"]',
            ]
        )
        + "\n"
    )
    cfg = load_config(cfg_path)
    labels = {f"libvirt:{URI}/{running.name()}", f"libvirt:{URI}/{off.name()}"}
    first = run_nightly(cfg, manage_services=False)
    actions = {it.source.path: it.action for it in first.plan}
    assert labels <= set(actions) and {actions[lb] for lb in labels} == {"scan"}
    doc = json.loads((tmp_path / "reports" / "latest" / "report.json").read_text())
    by_source = {img["source"]: img for img in doc["images"]}
    run_img = by_source[f"libvirt:{URI}/{running.name()}"]
    off_img = by_source[f"libvirt:{URI}/{off.name()}"]
    assert run_img["status"] != "error" and off_img["status"] != "error"
    assert run_img["disks"][0]["point"]["consistency"] == "crash-consistent"
    assert off_img["disks"][0]["point"]["consistency"] == "offline"
    second = run_nightly(cfg, manage_services=False)
    again = {it.source.path: it.action for it in second.plan}
    assert again[f"libvirt:{URI}/{off.name()}"] == "carry"
    assert again[f"libvirt:{URI}/{running.name()}"] == "scan"
    assert running.isActive() and running.XMLDesc(0) == xml_before
    assert running.jobInfo()[0] == 0  # no backup job left


def _descendants(pid: int) -> set[int]:
    """Every living process under *pid*."""
    children: dict[int, list[int]] = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            if stat[0] != "Z":
                children.setdefault(int(stat[1]), []).append(int(p))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _cmdline(pid: int) -> bytes:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return b""


def test_domain_that_disappears_mid_scan(conn: Any, domains: dict[str, Any]) -> None:
    """Destroyed and undefined while its backup view is being read: that image is a clear
    error, the other image of the run is scanned, and nothing is left (no backup folder, no
    NBD export, no VM or appliance qemu, no guardian)."""
    from vmscan.scanner import ScanOptions, scan_sources

    disk = domains["folder"] / "vanishing.qcow2"
    shutil.copyfile(fixtures.build("debian-lvm", "qcow2"), disk)
    name = f"vmscan-gone-{uuid.uuid4().hex[:8]}"
    dom = conn.defineXML(DOMAIN_XML.format(name=name, disk=disk))
    dom.create()
    label, other = f"libvirt:{name}", f"libvirt:{domains['off'].name()}"
    tmp_before = set(os.listdir("/tmp"))
    # Under pytest-xdist this process may already have children (a session clamd).
    procs_before = _descendants(os.getpid())
    seen: dict[str, Any] = {}

    def vanish_while_reading(source: str, _files: int) -> None:
        """At the first files the walk of the domain's view reports: every appliance of
        this run is stopped while the domain is destroyed and undefined, then let go on,
        so that the rest of the scan reads a view that is gone."""
        if source != label or seen:
            return
        seen["folders"] = [
            d for d in set(os.listdir("/tmp")) - tmp_before if d.startswith("vmscan-backup-")
        ]
        qemus = [p for p in _descendants(os.getpid()) if b"qemu-system" in _cmdline(p)]
        seen["qemus"] = qemus
        for p in qemus:
            os.kill(p, signal.SIGSTOP)
        try:
            dom.destroy()
            dom.undefine()
        finally:
            for p in qemus:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGCONT)

    try:
        opts = ScanOptions(jobs=2, manifest=True, checks=(), timeout=600, libvirt_uri=URI)
        result = scan_sources([label, other], opts, file_progress=vanish_while_reading)
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()
    assert seen.get("qemus"), "the scan of the domain never reported its walk"
    gone, kept = result.images
    assert gone.status == "error"
    assert gone.errors[-1].startswith(
        f"{label}: the domain disappeared (destroyed and undefined) during the scan: "
        "the point-in-time view went with it"
    ), gone.errors
    assert kept.status in ("ok", "partial"), kept.errors
    assert EICAR_PATH in {e.path for e in kept.manifest}
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(name)
    # The backup's folder (socket, scratch file) is gone, and nothing serves or reads it.
    assert len(seen["folders"]) == 1
    assert not (Path("/tmp") / seen["folders"][0]).exists()
    assert _descendants(os.getpid()) - procs_before == set()  # workers, guardians, qemu
    leftover = [
        p
        for p in filter(str.isdigit, os.listdir("/proc"))
        if name.encode() in _cmdline(int(p)) or seen["folders"][0].encode() in _cmdline(int(p))
    ]
    assert leftover == []


def test_backup_refused_means_a_live_read_said_so(
    conn: Any, domains: dict[str, Any], tmp_path: Path
) -> None:
    """A running domain whose disk libvirt will not back up (a ``<transient/>`` disk: the
    qemu driver refuses block jobs on it, the backup included) is read from its files as
    they are, and the report says that this is no point-in-time view."""
    from vmscan.report.html import render_html

    disk = domains["folder"] / "transient.qcow2"
    shutil.copyfile(fixtures.build("debian-lvm", "qcow2"), disk)
    xml = DOMAIN_XML.replace("bus='virtio'/>", "bus='virtio'/>\n      <transient/>")
    dom = conn.createXML(xml.format(name=f"vmscan-transient-{uuid.uuid4().hex[:8]}", disk=disk), 0)
    out = tmp_path / "report.json"
    try:
        live_xml, disk_hash = dom.XMLDesc(0), sha256_file(disk)
        rc = main(
            ["scan", "-q", "--manifest", "--checks", "none", "--connect", URI, "-o", str(out),
             f"libvirt:{dom.name()}"]
        )  # fmt: skip
        assert dom.isActive() and dom.XMLDesc(0) == live_xml
        assert dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
    doc = json.loads(out.read_text())
    (img,) = doc["images"]
    assert rc == 0 and img["status"] in ("ok", "partial"), img["errors"]
    (d,) = img["disks"]
    assert d["point"]["kind"] == d["point"]["consistency"] == "live-read"
    note = d["point"]["note"]
    assert note.startswith("not a point-in-time view, the files were read live while the VM ran")
    assert "backup API unavailable: " in note and "transient disk" in note, note
    assert EICAR_PATH in {e["path"] for e in img["manifest"]}
    # What was read is the disk as the VM sees it now: libvirt's transient overlay (vetted,
    # its backing file the disk) with the VM's writes.
    assert [(Path(la["path"]).parent, la["format"]) for la in d["layers"]] == [
        (disk.parent, "qcow2"),
        (disk.parent, "qcow2"),
    ]
    assert d["layers"][0]["path"] == str(disk) and d["path"] == d["layers"][1]["path"]
    html = render_html(doc)
    assert "consistency: <b>live-read</b> (not a point-in-time view" in html
    assert sha256_file(disk) == disk_hash  # the VM's writes went to its transient overlay


AGENT_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>384</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='none'/>
  </devices>
</domain>"""


def _agent(dom: Any, command: str, **arguments: Any) -> Any:
    import libvirt_qemu

    cmd = {"execute": command, **({"arguments": arguments} if arguments else {})}
    return json.loads(libvirt_qemu.qemuAgentCommand(dom, json.dumps(cmd), 5, 0))


def test_agent_answers_so_the_view_is_quiesced(
    conn: Any, domains: dict[str, Any], tmp_path: Path
) -> None:
    """A VM that runs qemu-guest-agent (fixtures.agent: the host's kernel, an initramfs
    with qemu-ga, the disk's /boot mounted): its filesystems are frozen while the backup
    starts, thawed right after, and the report says ``quiesced``. Once nothing is mounted
    the agent still answers but freezes nothing: that view is only crash-consistent."""
    from fixtures import agent

    why = agent.missing()
    if why:
        pytest.skip(why)
    kernel, initrd = agent.build_initrd()
    folder = domains["folder"]
    for f in (kernel, initrd):  # libvirt labels the files it boots: copies, not the cache's
        shutil.copyfile(f, folder / f.name)
    disk = folder / "agent.qcow2"
    shutil.copyfile(fixtures.build("debian-lvm", "qcow2"), disk)
    name = f"vmscan-agent-{uuid.uuid4().hex[:8]}"
    xml = AGENT_XML.format(
        name=name, kernel=folder / kernel.name, initrd=folder / initrd.name, disk=disk
    )
    dom = conn.createXML(xml, 0)
    out, out2 = tmp_path / "report.json", tmp_path / "unmounted.json"
    argv = ["scan", "-q", "--manifest", "--checks", "none", "--connect", URI, "-o"]
    try:
        for _ in range(600):  # the kernel boots under TCG: a minute or two on a busy host
            with contextlib.suppress(libvirt.libvirtError):
                if _agent(dom, "guest-ping") == {"return": {}}:
                    break
            time.sleep(0.5)
        assert _agent(dom, "guest-ping") == {"return": {}}
        live_xml = dom.XMLDesc(0)
        rc = main([*argv, str(out), f"libvirt:{name}"])
        assert dom.isActive() and dom.XMLDesc(0) == live_xml
        assert dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE
        assert _agent(dom, "guest-fsfreeze-status") == {"return": "thawed"}
        pid = _agent(dom, "guest-exec", path="/bin/umount", arg=["/mnt"])["return"]["pid"]
        for _ in range(100):
            status = _agent(dom, "guest-exec-status", pid=pid)["return"]
            if status["exited"]:
                break
            time.sleep(0.2)
        assert status == {"exited": True, "exitcode": 0}, status
        rc2 = main([*argv, str(out2), f"libvirt:{name}"])
        assert dom.isActive() and _agent(dom, "guest-fsfreeze-status") == {"return": "thawed"}
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
    (img,) = json.loads(out.read_text())["images"]
    assert rc == 0 and img["status"] in ("ok", "partial"), img["errors"]
    (d,) = img["disks"]
    assert d["point"]["kind"] == "backup"
    assert d["point"]["consistency"] == "quiesced"
    assert "note" not in d["point"]
    assert EICAR_PATH in {e["path"] for e in img["manifest"]}
    (img2,) = json.loads(out2.read_text())["images"]
    assert rc2 == 0 and img2["status"] in ("ok", "partial"), img2["errors"]
    point = img2["disks"][0]["point"]
    assert point["consistency"] == "crash-consistent"
    assert point["note"] == "guest agent did not freeze the filesystems: it froze no filesystem"

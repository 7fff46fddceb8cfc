"""``libvirt:NAME``: a libvirt domain as a source; a running one read through a pull-mode backup.

A shut-off domain is scanned from its disk files, vetted like any image. A running domain's
files are never opened by vmscan: libvirt's pull-mode backup (``virDomainBackupBegin``)
makes the VM's own qemu export a point-in-time view of each disk over NBD, read-only, on a
unix socket in a private folder, while the VM runs on and its disk chain stays as it was
(the writes the guest makes meanwhile go to a scratch file in that folder, which libvirt
deletes with the job). ``VIR_DOMAIN_BACKUP_BEGIN_QUIESCE`` freezes the guest's
filesystems through qemu-guest-agent for the instant the view is taken ("quiesced"); when
the agent does not answer the view is "crash-consistent". Only where the backup API is
unavailable are the files read live ("live-read": not a point in time, said in the report).

The backup job is always ended: in a ``finally``, and by a small guardian process (own
session, started before any libvirt connection) that aborts the job when the worker dies
without saying it is done (``--timeout`` SIGKILL, SIGTERM, a crash).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any
from xml.sax.saxutils import quoteattr

import defusedxml.ElementTree as SafeET

from vmscan.errors import ImageError, ImageTimeoutError
from vmscan.model import DiskLayer, DiskRef
from vmscan.proc import Budget

log = logging.getLogger(__name__)

PREFIX = "libvirt:"
DEFAULT_URI = "qemu:///system"
#: How long libvirt may take to start the backup's NBD server.
BACKUP_START_TIMEOUT = 60.0
#: Seconds qemu-guest-agent has to answer a ping before the view is taken unfrozen.
AGENT_TIMEOUT = 5
_MAX_XML = 4 * 1024 * 1024
#: The user qemu runs as under qemu:///system on Debian (it must reach the socket folder).
_QEMU_USER = "libvirt-qemu"


def is_domain_source(label: str) -> bool:
    """True for ``libvirt:NAME`` (and ``libvirt:URI/NAME``)."""
    return label.startswith(PREFIX)


def split_label(label: str, default_uri: str) -> tuple[str, str]:
    """(connection URI, domain name) of ``libvirt:NAME`` or ``libvirt:URI/NAME``.

    A domain name cannot hold ``/`` (libvirt refuses it), so the name is what follows the
    last ``/`` of a label that carries a URI (``libvirt:qemu+ssh://host/system/web1``);
    the nightly job names its domains so, one label per domain of each connection.
    """
    rest = label[len(PREFIX) :]
    if "://" in rest:
        uri, _, name = rest.rpartition("/")
        return uri, name
    return default_uri, rest


def domain_label(uri: str, name: str) -> str:
    """The source label of domain *name* on connection *uri* (see :func:`split_label`)."""
    return f"{PREFIX}{uri}/{name}"


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError as e:  # pragma: no cover - depends on the host
        raise ImageError(
            "the libvirt Python bindings are missing (Debian package python3-libvirt)"
        ) from e
    # libvirt prints every error on stderr by default; vmscan reports them itself.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def _msg(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:500]


def _parse(xml: str, label: str) -> Any:
    if len(xml) > _MAX_XML:
        raise ImageError(f"{label}: domain XML is larger than {_MAX_XML} bytes")
    try:
        return SafeET.fromstring(xml)
    except Exception as e:  # defusedxml raises several types
        raise ImageError(f"{label}: unreadable domain XML from libvirt: {e}") from e


def _live_layers(root: Any, target: str) -> tuple[DiskLayer, ...]:
    """The chain libvirt reports for a running disk (``<backingStore>``), base first."""
    for disk in root.findall("./devices/disk"):
        tgt = disk.find("target")
        if tgt is None or tgt.get("dev") != target:
            continue
        chain: list[tuple[str, str]] = []
        node = disk
        while node is not None and len(chain) < 16:
            src = node.find("source")
            fmt = node.find("format") if node is not disk else node.find("driver")
            path = (src.get("file") or src.get("dev") or "") if src is not None else ""
            if not path:
                break
            chain.append((path, (fmt.get("type") if fmt is not None else "") or "raw"))
            node = node.find("backingStore")
        out = []
        for i, (path, fmt) in enumerate(reversed(chain)):
            size, mtime = 0, ""
            with contextlib.suppress(OSError):
                st = os.stat(path)
                size = st.st_size
                mtime = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime))
            out.append(DiskLayer(i, path, fmt, size, mtime))
        return tuple(out)
    return ()


class _Guardian:
    """A process that aborts the backup job if this worker dies before ending it."""

    def __init__(self) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            os.close(w)
            _guardian_main(r)
        os.close(r)
        self.pid, self.fd = pid, w

    def arm(self, uri: str, uuid: str, socket_path: str) -> None:
        os.write(self.fd, f"arm\0{uri}\0{uuid}\0{socket_path}\n".encode())

    def done(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.fd, b"done\n")
            os.close(self.fd)
        with contextlib.suppress(ChildProcessError):
            for _ in range(100):
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    break
                time.sleep(0.05)


def _guardian_main(fd: int) -> None:  # pragma: no cover - runs in the forked child
    try:
        os.setsid()  # not in the worker's process group: a kill of it does not reach us
        os.closerange(0, fd)
        os.closerange(fd + 1, 65536)
        data = b""
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
        lines = data.split(b"\n")
        arm = next((ln for ln in lines if ln.startswith(b"arm\0")), None)
        if arm is not None and b"done" not in lines:
            _, uri, uuid, sock = arm.decode().split("\0")
            lv = _libvirt()
            conn = lv.open(uri)
            dom = conn.lookupByUUIDString(uuid)
            try:
                if sock in dom.backupGetXMLDesc(0):
                    dom.abortJob()
            finally:
                folder = os.path.dirname(sock)
                if os.path.basename(folder).startswith("vmscan-backup-"):
                    shutil.rmtree(folder, ignore_errors=True)
    except BaseException:
        pass
    os._exit(0)


def _folder_for_qemu(uri: str) -> str:
    """A private folder the VM's qemu can write its socket and scratch files into."""
    folder = tempfile.mkdtemp(prefix="vmscan-backup-", dir="/tmp")
    if uri.startswith("qemu:///system") and os.geteuid() == 0:
        try:
            ent = pwd.getpwnam(_QEMU_USER)
            os.chown(folder, ent.pw_uid, ent.pw_gid)
        except KeyError:
            log.debug("no user %s: socket folder left to root", _QEMU_USER)
    return folder


def _agent_answers(dom: Any) -> str:
    """ "" when qemu-guest-agent answers a ping within a few seconds, else why not."""
    try:
        import libvirt_qemu
    except ImportError:  # pragma: no cover - shipped with python3-libvirt
        return "libvirt_qemu bindings missing"
    try:
        libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-ping"}', AGENT_TIMEOUT, 0)
    except Exception as e:  # libvirtError: no agent channel, or no answer
        return _msg(e)
    return ""


def _begin(lv: Any, dom: Any, xml: str) -> tuple[str, str]:
    """Start the pull-mode backup, filesystems frozen when the agent answers; (consistency, note).

    The freeze lasts only while the backup job starts (its point in time is fixed then); it
    is thawed at once, also when the start fails.
    """
    why = _agent_answers(dom)
    frozen = False
    if not why:
        try:
            count = dom.fsFreeze()
            frozen = True
            if not count:  # nothing frozen (no filesystem it can freeze): not quiesced
                why = "it froze no filesystem"
        except lv.libvirtError as e:
            why = _msg(e)
    try:
        dom.backupBegin(xml, None, 0)
    finally:
        if frozen:
            try:
                dom.fsThaw()
            except lv.libvirtError as e:
                log.error("the guest's filesystems could not be thawed: %s", _msg(e))
    if frozen and not why:
        return "quiesced", ""
    return "crash-consistent", f"guest agent did not freeze the filesystems: {why}"


_LIVE = "not a point-in-time view, the files were read live while the VM ran: "
_LOST = "the point-in-time view went with it and this image was not scanned to the end"


def _view_lost(lv: Any, dom: Any) -> str:
    """Why the backup's view is gone ("" while the domain runs and the job holds)."""
    try:
        if not dom.isActive():
            return "the domain was stopped"
        if dom.jobInfo()[0] == lv.VIR_DOMAIN_JOB_NONE:
            return "the backup job was ended by someone else"
    except lv.libvirtError as e:
        if e.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
            return "the domain disappeared (destroyed and undefined)"
        # Not known to be gone: the reads say whether the view held.
        log.warning("could not ask about the backup job: %s", _msg(e))
    return ""


_UNSUPPORTED = (
    "VIR_ERR_NO_SUPPORT",
    "VIR_ERR_OPERATION_UNSUPPORTED",
    "VIR_ERR_ARGUMENT_UNSUPPORTED",
)


@contextlib.contextmanager
def open_domain(
    label: str,
    uri: str,
    disk_format: str | None,
    allow_backing: tuple[str, ...],
    budget: Budget,
) -> Iterator[tuple[tuple[DiskRef, ...], tuple[DiskRef, ...]]]:
    """(disks for the report, disks for the appliance) of the domain ``libvirt:NAME``."""
    from vmscan.disk import check_disk, domain_disks

    uri, name = split_label(label, uri)
    if not name:
        raise ImageError(f"{label}: no domain name after {PREFIX!r}")
    guardian = _Guardian()  # before any libvirt connection: the child forks with no threads
    folder: str | None = None
    dom: Any = None
    lv: Any = None
    job = False
    try:
        lv = _libvirt()
        try:
            conn = lv.open(uri)
        except lv.libvirtError as e:
            raise ImageError(f"{label}: cannot connect to {uri}: {_msg(e)}") from e
        try:
            dom = conn.lookupByName(name)
        except lv.libvirtError as e:
            if e.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                raise ImageError(f"{label}: no domain named {name!r} on {uri}") from e
            raise ImageError(f"{label}: {_msg(e)}") from e
        try:
            active = bool(dom.isActive())
            xml = dom.XMLDesc(0 if active else lv.VIR_DOMAIN_XML_INACTIVE)
        except lv.libvirtError as e:  # it went away between the two calls
            raise ImageError(f"{label}: the domain disappeared: {_msg(e)}") from e
        root = _parse(xml, label)
        entries = domain_disks(root, label)
        if not active:
            disks = []
            for file, dtype, _target in entries:
                d = check_disk(file, disk_format or dtype, allow_backing, budget)
                point = {"kind": "offline", "consistency": "offline", "domain": name}
                disks.append(_with(d, point=point))
            yield tuple(disks), tuple(disks)
            return
        missing = [f for f, _d, t in entries if not t]
        if missing:
            raise ImageError(f"{label}: disk {missing[0]} has no target name in the live XML")
        folder = _folder_for_qemu(uri)
        sock = os.path.join(folder, "nbd.sock")
        parts = "".join(
            f"<disk name={quoteattr(t)} backup='yes' type='file'>"
            f"<scratch file={quoteattr(os.path.join(folder, t + '.scratch'))}/></disk>"
            for _f, _d, t in entries
        )
        bxml = (
            f"<domainbackup mode='pull'><server transport='unix' socket={quoteattr(sock)}/>"
            f"<disks>{parts}</disks></domainbackup>"
        )
        guardian.arm(uri, dom.UUIDString(), sock)
        note = ""
        if not hasattr(dom, "backupBegin"):  # bindings older than libvirt 6.0
            consistency, note = "live-read", _LIVE + "backup API not in these libvirt bindings"
        else:
            try:
                consistency, note = _begin(lv, dom, bxml)
                job = True
            except lv.libvirtError as e:
                code = e.get_error_code()
                if not any(getattr(lv, n, None) == code for n in _UNSUPPORTED):
                    raise ImageError(f"{label}: the backup could not start: {_msg(e)}") from e
                consistency, note = "live-read", _LIVE + f"backup API unavailable: {_msg(e)}"
        base = {"kind": "backup", "consistency": consistency, "domain": name, "uri": uri}
        if note:
            base["note"] = note[:500]
        report: list[DiskRef] = []
        views: list[DiskRef] = []
        for file, dtype, target in entries:
            fmt = dtype or "raw"
            layers = _live_layers(root, target)
            if consistency == "live-read":
                # The VM's own files, opened like any image: vetted first (backing files
                # inside the allowed folders, formats recorded); qemu-img runs with -U.
                point = {**base, "kind": "live-read", "target": target}
                d = _with(check_disk(file, disk_format or fmt, allow_backing, budget), point=point)
                report.append(d)
                views.append(d)
                continue
            point = {**base, "target": target}
            d = DiskRef(file, fmt, None, (), layers=layers, point=point)
            report.append(d)
            views.append(_with(d, nbd_socket=sock, nbd_export=target))
        if job:
            deadline = time.monotonic() + budget.cap(BACKUP_START_TIMEOUT)
            while not os.path.exists(sock):
                if time.monotonic() > deadline:
                    raise ImageTimeoutError(f"{label}: the backup's NBD server did not start")
                time.sleep(0.05)
        try:
            yield tuple(report), tuple(views)
        except Exception as e:
            lost = _view_lost(lv, dom) if job else ""
            if lost:  # say why the reads failed, not how
                raise ImageError(f"{label}: {lost} during the scan: {_LOST}") from e
            raise
        lost = _view_lost(lv, dom) if job else ""
        if lost:  # reads may have failed quietly (files unreadable): nothing here holds
            raise ImageError(f"{label}: {lost} during the scan: {_LOST}")
    finally:
        if job and dom is not None:
            try:
                dom.abortJob()
            except Exception as e:  # the domain may have gone: nothing left to end
                log.warning("%s: ending the backup job: %s", label, e)
        guardian.done()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class Discovered:
    """One domain a libvirt connection knows (for the nightly job)."""

    uri: str
    name: str
    running: bool
    #: Host files of its disks (inactive definition), for storage grouping and identity.
    disks: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The source to scan (with ``--connect`` / ``libvirt_uri`` set to :attr:`uri`)."""
        return PREFIX + self.name

    @property
    def full_label(self) -> str:
        """The source to scan, carrying its connection (``libvirt:URI/NAME``)."""
        return domain_label(self.uri, self.name)


def discover_domains(uris: tuple[str, ...] | list[str]) -> tuple[list[Discovered], list[str]]:
    """Every domain, running and shut off, of each connection; and a warning per failure."""
    found: list[Discovered] = []
    warnings: list[str] = []
    if not uris:
        return found, warnings
    lv = _libvirt()
    for uri in uris:
        try:
            conn = lv.open(uri)
        except lv.libvirtError as e:
            warnings.append(f"{uri}: cannot connect: {_msg(e)}")
            continue
        try:
            for dom in conn.listAllDomains(0):
                try:
                    found.append(
                        Discovered(uri, dom.name(), bool(dom.isActive()), _disk_files(lv, dom))
                    )
                except lv.libvirtError as e:  # it went away while listing
                    warnings.append(f"{uri}: a domain disappeared while listing: {_msg(e)}")
        except lv.libvirtError as e:
            warnings.append(f"{uri}: cannot list domains: {_msg(e)}")
        finally:
            conn.close()
    found.sort(key=lambda d: (d.uri, d.name))
    return found, warnings


def _disk_files(lv: Any, dom: Any) -> tuple[str, ...]:
    """Host files of a domain's disks from its inactive definition ((): none readable)."""
    from vmscan.disk import domain_disks

    try:
        root = _parse(dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE), PREFIX + dom.name())
        return tuple(path for path, _fmt, _dev in domain_disks(root, PREFIX + dom.name()))
    except ImageError:
        return ()


def _with(d: DiskRef, **changes: Any) -> DiskRef:
    return dataclasses.replace(d, **changes)

"""The guest's configured package repositories, and whether a fix is available from them.

Read through the :class:`~vmscan.guestfs_view.GuestFS` view with a size limit per file and
a bound on the number of files (guest files are hostile):

- apt: ``/etc/apt/sources.list`` and ``/etc/apt/sources.list.d/*.list`` (one-line format)
  and ``*.sources`` (deb822, parsed with python-debian); ``deb`` entries only, ``Enabled:
  no`` stanzas and commented lines left out; the old security layout ``buster/updates``
  is the suite ``buster-security``;
- apk: ``/etc/apk/repositories`` (``…/v3.18/main``: branch and repository);
- rpm: ``/etc/yum.repos.d/*.repo`` (INI sections, ``enabled`` defaults to 1).

What can be said honestly per finding (:func:`fix_availability`):

- Debian tracker records list, per suite, the version each carries (``repositories``): the
  fix is ``available`` when a configured suite carries a version at or above the fix,
  ``not_configured`` when every configured suite of the release is in that list and none
  carries it (e.g. only ``bookworm`` configured, the fix in ``bookworm-security``);
- Debian/Ubuntu OSV advisories (DSA, DLA, USN) are published in the release's security
  suite: ``available`` when it is configured, else ``unknown`` (a point release may have
  brought the fix into the main suite since);
- Alpine secdb names its branch and repository: ``available`` when that ``vX.Y/repo`` is
  configured, ``not_configured`` when the guest's repositories are readable and it is not;
- rpm repositories do not say which advisory they carry: ``unknown`` while an enabled
  repository exists, ``not_configured`` when none is enabled;
- nothing readable (no files, a read error, an offline re-check without a previous
  reading): ``unknown``.
"""

from __future__ import annotations

import configparser
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from debian.deb822 import Deb822

from vmscan.errors import GuestReadError, TooLargeError
from vmscan.guestfs_view import GuestFS

log = logging.getLogger(__name__)

#: One repository file is read up to this size, and at most this many files per folder.
FILE_LIMIT = 1024 * 1024
MAX_FILES = 64
#: Entries kept per root (a hostile guest could list millions).
MAX_ENTRIES = 256

APT_LIST = "/etc/apt/sources.list"
APT_DIR = "/etc/apt/sources.list.d"
APK_REPOSITORIES = "/etc/apk/repositories"
YUM_DIR = "/etc/yum.repos.d"
_APK_RE = re.compile(r"/(v\d+\.\d+|edge)/([A-Za-z0-9._-]+)/?$")

AVAILABLE, NOT_CONFIGURED, UNKNOWN = "available", "not_configured", "unknown"


@dataclass
class RepoConfig:
    """What the guest's repository configuration says (``read`` False: nothing readable)."""

    kind: str = ""  # apt | apk | rpm | "" (none found)
    read: bool = False
    suites: list[str] = field(default_factory=list)  # apt suites, apk "v3.18/main"
    repos: list[dict[str, Any]] = field(default_factory=list)  # rpm sections
    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_section(self) -> dict[str, Any]:
        """The ``sections.patch.repositories`` entry."""
        out: dict[str, Any] = {"kind": self.kind or None, "read": self.read, "files": self.files}
        if self.kind in ("apt", "apk"):
            out["suites"] = self.suites
        if self.kind == "rpm":
            out["enabled"] = [r["id"] for r in self.repos if r.get("enabled")]
            out["disabled"] = [r["id"] for r in self.repos if not r.get("enabled")]
        if self.problems:
            out["problems"] = self.problems[:10]
        return out

    @classmethod
    def from_section(cls, sec: Any) -> RepoConfig | None:
        """A configuration stored by an earlier scan (offline re-checks have no guest)."""
        if not isinstance(sec, dict) or not sec.get("read"):
            return None
        cfg = cls(kind=str(sec.get("kind") or ""), read=True)
        cfg.suites = [str(s) for s in sec.get("suites") or []][:MAX_ENTRIES]
        cfg.repos = [{"id": str(r), "enabled": True} for r in sec.get("enabled") or []]
        cfg.repos += [{"id": str(r), "enabled": False} for r in sec.get("disabled") or []]
        cfg.files = [str(f) for f in sec.get("files") or []][:MAX_FILES]
        return cfg


def _suite(suite: str) -> str:
    # security.debian.org's old layout: "buster/updates" is the buster-security suite.
    return suite[: -len("/updates")] + "-security" if suite.endswith("/updates") else suite


def parse_sources_list(text: str) -> list[str]:
    """Suites of the ``deb`` lines of a one-line-format sources.list."""
    out: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        # deb URI SUITE [COMPONENT...]; a URI has a scheme (http:, file:, cdrom:, mirror+…).
        if len(words) >= 2 and re.match(r"^[a-z][a-z0-9+.-]*:", words[0]):
            out.append(_suite(words[1]))
    return out


def parse_deb822_sources(text: str) -> list[str]:
    """Suites of the enabled ``deb`` stanzas of a deb822 ``.sources`` file."""
    out: list[str] = []
    for para in Deb822.iter_paragraphs(text.splitlines()):
        types = str(para.get("Types", "")).split()
        if "deb" not in types or str(para.get("Enabled", "yes")).strip().lower() == "no":
            continue
        out += [_suite(s) for s in str(para.get("Suites", "")).split()]
    return out


def parse_apk_repositories(text: str) -> list[str]:
    """``vX.Y/repo`` of each repository line (``@tag`` pins kept, comments dropped)."""
    out: list[str] = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        url = s.split()[-1]
        m = _APK_RE.search(url)
        if m:
            out.append(f"{m.group(1)}/{m.group(2)}")
    return out


def parse_yum_repo(text: str) -> list[dict[str, Any]]:
    """Sections of a ``.repo`` file: id, name, enabled, whether it names a source URL."""
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        cp.read_string(text)
    except configparser.Error as e:
        raise ValueError(f"not an INI file: {str(e)[:120]}") from e
    out = []
    for sec in cp.sections():
        body = cp[sec]
        enabled = body.get("enabled", "1").strip().lower() in ("1", "yes", "true", "on")
        has_url = any(body.get(k) for k in ("baseurl", "mirrorlist", "metalink"))
        out.append(
            {
                "id": sec[:100],
                "name": str(body.get("name", ""))[:100],
                "enabled": enabled and has_url,
            }
        )
    return out


def _read(fs: GuestFS, path: str, cfg: RepoConfig) -> str | None:
    try:
        data = fs.read_bytes(path, FILE_LIMIT)
    except (GuestReadError, TooLargeError) as e:
        cfg.problems.append(f"{path}: {str(e)[:200]}")
        return None
    cfg.files.append(path)
    return data.decode("utf-8", errors="replace")


def _listed(fs: GuestFS, folder: str, suffixes: tuple[str, ...], cfg: RepoConfig) -> list[str]:
    names = sorted(n for n in fs.listdir(folder) if n.endswith(suffixes))
    if len(names) > MAX_FILES:
        cfg.problems.append(f"{folder}: {len(names)} files, only the first {MAX_FILES} read")
    return [f"{folder}/{n}" for n in names[:MAX_FILES]]


def read_repositories(fs: GuestFS | None, package_format: str) -> RepoConfig:
    """The repository configuration of one root (``read`` False when nothing was read)."""
    cfg = RepoConfig()
    if fs is None:
        return cfg
    try:
        if package_format == "deb" or fs.exists(APT_LIST) or fs.is_dir(APT_DIR):
            cfg.kind = "apt"
            paths = [APT_LIST] if fs.is_file(APT_LIST) else []
            paths += _listed(fs, APT_DIR, (".list", ".sources"), cfg)
            for p in paths:
                text = _read(fs, p, cfg)
                if text is not None:
                    if p.endswith(".sources"):
                        found = parse_deb822_sources(text)
                    else:
                        found = parse_sources_list(text)
                    cfg.suites += [s[:100] for s in found]
        elif package_format == "apk" or fs.is_file(APK_REPOSITORIES):
            cfg.kind = "apk"
            text = _read(fs, APK_REPOSITORIES, cfg)
            if text is not None:
                cfg.suites = parse_apk_repositories(text)
        elif package_format == "rpm" or fs.is_dir(YUM_DIR):
            cfg.kind = "rpm"
            for p in _listed(fs, YUM_DIR, (".repo",), cfg):
                text = _read(fs, p, cfg)
                if text is None:
                    continue
                try:
                    cfg.repos += parse_yum_repo(text)
                except ValueError as e:
                    cfg.problems.append(f"{p}: {e}")
    except (GuestReadError, OSError) as e:  # one bad folder: say so, never "absent"
        cfg.problems.append(f"repositories: {str(e)[:200]}")
        return cfg
    cfg.suites = list(dict.fromkeys(cfg.suites))[:MAX_ENTRIES]
    cfg.repos = cfg.repos[:MAX_ENTRIES]
    # Read: the configuration was looked at without errors (no file at all is a reading:
    # nothing is configured), or some of it was read despite errors.
    cfg.read = bool(cfg.kind) and (not cfg.problems or bool(cfg.suites or cfg.repos))
    return cfg


def fix_availability(
    cfg: RepoConfig | None,
    *,
    feed_kind: str,
    codename: str,
    carriers: list[str],
    known_suites: list[str],
    alpine_repo: str = "",
) -> tuple[str, str]:
    """(``available`` | ``not_configured`` | ``unknown``, why) for one fixable finding.

    *carriers*: suites known to carry the fix (tracker ``repositories`` at or above the
    fixed version); *known_suites*: every suite the tracker lists for that release.
    """
    if cfg is None or not cfg.read:
        return UNKNOWN, "the guest's repository configuration was not read"
    if cfg.kind == "rpm":
        enabled = [r["id"] for r in cfg.repos if r.get("enabled")]
        if not enabled:
            return NOT_CONFIGURED, "no enabled repository with a source URL in /etc/yum.repos.d"
        return UNKNOWN, "rpm repositories do not say which advisories they carry"
    configured = set(cfg.suites)
    if cfg.kind == "apk":
        if not alpine_repo:
            return UNKNOWN, "the advisory does not name its Alpine repository"
        if alpine_repo in configured:
            return AVAILABLE, f"{alpine_repo} is configured"
        return NOT_CONFIGURED, f"{alpine_repo} is not in /etc/apk/repositories"
    if not configured:
        return NOT_CONFIGURED, "no deb source is configured"
    hit = sorted(configured & set(carriers))
    if hit:
        return AVAILABLE, f"{', '.join(hit)} configured and carries the fix"
    mine = {s for s in configured if s == codename or s.startswith(f"{codename}-")}
    if feed_kind == "debian-tracker" and known_suites and mine and mine <= set(known_suites):
        return NOT_CONFIGURED, (
            f"the fix is in {', '.join(carriers) or 'no suite yet'}; configured: "
            f"{', '.join(sorted(mine))}"
        )
    if feed_kind == "osv" and codename:
        # Debian's DSA/DLA go to CODENAME-security; Ubuntu's USN to -security and -updates.
        pockets = sorted(configured & {f"{codename}-security", f"{codename}-updates"})
        if pockets:
            return (
                AVAILABLE,
                f"{', '.join(pockets)} configured (security fixes are published there)",
            )
        return UNKNOWN, f"{codename}-security is not configured; a point release may carry the fix"
    return UNKNOWN, "the configured suites do not say whether they carry the fix"

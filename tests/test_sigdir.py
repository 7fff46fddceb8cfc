"""One precedence for the signatures folder: explicit option, $VMSCAN_SIGNATURES, bundled."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmscan import eol, sigdir
from vmscan.advisories import default_advisories_dir
from vmscan.checks.patch import signatures_dir as patch_dir
from vmscan.cli import signatures_dir as cli_dir
from vmscan.nightly import default_signatures_dir


def test_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VMSCAN_SIGNATURES", raising=False)
    assert sigdir.signatures_dir() == sigdir.BUNDLED
    assert (sigdir.BUNDLED / "clamav").is_dir()
    monkeypatch.setenv("VMSCAN_SIGNATURES", str(tmp_path / "env"))
    assert sigdir.signatures_dir() == tmp_path / "env"
    # An explicit folder (--dir, the nightly's signatures_dir) beats the environment.
    opts = {"signatures_dir": str(tmp_path / "opt")}
    assert sigdir.signatures_dir(opts) == tmp_path / "opt"
    assert sigdir.signatures_dir(opts, explicit=str(tmp_path / "x")) == tmp_path / "x"


def test_every_caller_agrees(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMSCAN_SIGNATURES", str(tmp_path / "env"))
    opts = {"signatures_dir": str(tmp_path / "opt")}
    assert cli_dir() == default_signatures_dir() == tmp_path / "env"
    assert eol.default_table_path() == tmp_path / "env" / "eol.json"
    assert default_advisories_dir() == tmp_path / "env" / "advisories"
    assert patch_dir(opts) == tmp_path / "opt"
    assert default_advisories_dir(opts) == tmp_path / "opt" / "advisories"

"""Layering made visible: the import contract holds, vmscan's own import errors crash."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vmscan import cli

REPO = Path(__file__).resolve().parent.parent


def test_import_contract_kept() -> None:
    exe = shutil.which("lint-imports") or str(
        Path(cli.__file__).parents[1] / ".venv/bin/lint-imports"
    )
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    res = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 kept, 0 broken" in res.stdout


def test_missing_own_subcommand_module_crashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_COMMAND_MODULES", (*cli._COMMAND_MODULES, "vmscan.commands.nope"))
    with pytest.raises(ModuleNotFoundError):
        cli.build_parser()

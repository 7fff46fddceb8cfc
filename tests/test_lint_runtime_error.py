"""The lint step that keeps libguestfs' RuntimeError inside the guest-access layer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent


def _lint() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_runtime_error", REPO / "scripts" / "check_runtime_error.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_vmscan_is_clean() -> None:
    assert _lint().main(["x", str(REPO / "vmscan")]) == 0


def test_catches_outside_the_seam_are_found(tmp_path: Path) -> None:
    pkg = tmp_path / "vmscan"
    (pkg / "checks").mkdir(parents=True)
    (pkg / "checks" / "bad.py").write_text(
        "import contextlib\n"
        "try:\n    pass\nexcept RuntimeError:\n    pass\n"
        "try:\n    pass\nexcept (OSError, RuntimeError) as e:\n    pass\n"
        "with contextlib.suppress(KeyError, RuntimeError):\n    pass\n"
        "try:\n    pass\nexcept RuntimeError:  # not-libguestfs: zipfile\n    pass\n"
        "try:\n    pass\nexcept OSError:\n    pass\n"
    )
    # The seam's own modules may catch it, but only at the package's top level.
    (pkg / "guestcall.py").write_text("try:\n    pass\nexcept RuntimeError:\n    pass\n")
    (pkg / "checks" / "session.py").write_text("try:\n    pass\nexcept RuntimeError:\n    pass\n")
    lint = _lint()
    found = lint.findings(pkg / "checks" / "bad.py")
    assert [f.split(":")[1] for f in found] == ["4", "8", "10"]
    assert lint.main(["x", str(pkg)]) == 1
    assert len(lint.findings(pkg / "checks" / "session.py")) == 1

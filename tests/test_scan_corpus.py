"""End to end over the real dfvfs images of the shared corpus (real libguestfs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from vmscan.cli import main
from vmscan.manifest import sha256_file

SCHEMA = Path(__file__).resolve().parent.parent / "vmscan" / "schema" / "report.schema.json"
EXPECTED = {"/passwords.txt", "/a_directory/a_file", "/a_directory/another_file"}


def validate(report: dict[str, Any]) -> None:
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))


@pytest.fixture(scope="module")
def corpus_run(
    corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, dict[str, Any], dict[str, str], dict[str, str]]:
    images = [corpus / "images" / f"dfvfs-ext2.{ext}" for ext in ("qcow2", "vmdk", "vhd")]
    images.append(corpus / "images" / "dfvfs-bad-checksum.vhd")
    before = {str(p): sha256_file(p) for p in images}
    out = tmp_path_factory.mktemp("scan") / "report.json"
    rc = main(
        [
            "scan",
            "-q",
            "--manifest",
            "--checks",
            "none",
            "-j",
            "2",
            "-o",
            str(out),
            *map(str, images),
        ]
    )
    after = {str(p): sha256_file(p) for p in images}
    return rc, json.loads(out.read_text()), before, after


@pytest.mark.guest
def test_exit_code_and_schema(
    corpus_run: tuple[int, dict[str, Any], dict[str, str], dict[str, str]],
) -> None:
    rc, report, _, _ = corpus_run
    assert rc == 2  # one image could not be scanned
    validate(report)
    assert [i["status"] for i in report["images"]] == ["no_os", "no_os", "no_os", "error"]


@pytest.mark.guest
def test_same_manifest_from_every_format(
    corpus_run: tuple[int, dict[str, Any], dict[str, str], dict[str, str]],
) -> None:
    _, report, _, _ = corpus_run
    manifests = []
    for img in report["images"][:3]:
        files = {m["path"]: (m["sha256"], m["size"]) for m in img["manifest"]}
        assert set(files) == EXPECTED
        manifests.append(files)
        assert img["roots"] == []
        assert img["filesystems"][0]["type"] == "ext2"
        assert img["filesystems"][0]["files"] == 3
    assert manifests[0] == manifests[1] == manifests[2]
    assert manifests[0]["/passwords.txt"][0] == (
        "02a2a6af2f1ecf4720d7d49d640f0d0a269a7ec733e41973bdd34f09dad0e252"
    )


@pytest.mark.guest
def test_bad_image_reason(
    corpus_run: tuple[int, dict[str, Any], dict[str, str], dict[str, str]],
) -> None:
    _, report, _, _ = corpus_run
    bad = report["images"][3]
    assert bad["status"] == "error"
    assert any("checksum" in e for e in bad["errors"])


@pytest.mark.guest
def test_images_unchanged(
    corpus_run: tuple[int, dict[str, Any], dict[str, str], dict[str, str]],
) -> None:
    _, _, before, after = corpus_run
    assert before == after

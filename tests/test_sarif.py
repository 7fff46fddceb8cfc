"""SARIF 2.1.0 output: schema-valid, rules from checks, stable partial fingerprints."""

from __future__ import annotations

import io
import json
from pathlib import Path

import jsonschema
import pytest
from nightly_samples import HOSTILE_PATH, finding, sample_image, sample_run

from vmscan.report import WRITERS
from vmscan.report.sarif import FINGERPRINT_NAME, to_sarif


def _doc(run_id: int = 1) -> dict:  # type: ignore[type-arg]
    doc = sample_run(
        run_id,
        [
            sample_image(
                "/img/a b.qcow2",
                findings=[
                    finding("patch", "CVE-2024-1", "high", "openssl"),
                    finding("antivirus", "EICAR", "critical", HOSTILE_PATH),
                    finding("migration", "MIG-1", "info", "/etc/fstab"),
                ],
            ),
            sample_image(
                "/img/c.qcow2", findings=[finding("patch", "CVE-2024-1", "high", "openssl")]
            ),
            sample_image("relative.img", error="cannot open"),
        ],
    )
    doc["images"][2]["status"] = "error"
    doc["images"][2]["errors"] = ["cannot open"]
    return doc


@pytest.fixture(scope="module")
def sarif_schema() -> dict:  # type: ignore[type-arg]
    path = Path(__file__).resolve().parent.parent.parent / "shared/schemas/sarif-schema-2.1.0.json"
    if not path.is_file():
        pytest.skip(f"{path} not present (the shared schemas lie beside the checkout)")
    schema: dict = json.loads(path.read_text())  # type: ignore[type-arg]
    return schema


def test_validates_against_schema(sarif_schema: dict) -> None:  # type: ignore[type-arg]
    buf = io.StringIO()
    WRITERS["sarif"](_doc(), buf)
    log = json.loads(buf.getvalue())
    jsonschema.validate(log, sarif_schema)
    assert log["version"] == "2.1.0"


def test_empty_run_validates(sarif_schema: dict) -> None:  # type: ignore[type-arg]
    jsonschema.validate(to_sarif(sample_run(1, [])), sarif_schema)


def test_rules_levels_and_fingerprints() -> None:
    log = to_sarif(_doc())
    run = log["runs"][0]
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    assert set(rules) == {"CVE-2024-1", "EICAR", "MIG-1"}
    assert rules["EICAR"]["properties"]["security-severity"] == "9.5"
    levels = {(r["ruleId"], r["properties"]["image"]): r["level"] for r in run["results"]}
    assert levels[("EICAR", "/img/a b.qcow2")] == "error"
    assert levels[("MIG-1", "/img/a b.qcow2")] == "note"
    for r in run["results"]:
        assert run["tool"]["driver"]["rules"][r["ruleIndex"]]["id"] == r["ruleId"]
    fps = [r["partialFingerprints"][FINGERPRINT_NAME] for r in run["results"]]
    assert len(set(fps)) == len(fps)  # the same CVE on two images is two results
    # Stable: another run with the same findings gives the same fingerprints.
    again = to_sarif(_doc(run_id=7))["runs"][0]["results"]
    assert [r["partialFingerprints"][FINGERPRINT_NAME] for r in again] == fps
    uri = run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == "file:///img/a%20b.qcow2"
    assert run["invocations"][0]["executionSuccessful"] is False
    assert run["invocations"][0]["toolExecutionNotifications"][0]["level"] == "error"

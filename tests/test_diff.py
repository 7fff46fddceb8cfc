"""diff_runs: findings by fingerprint, packages, new executables, images added and gone."""

from __future__ import annotations

from nightly_samples import finding, sample_image, sample_run

from vmscan.diff import diff_runs, finding_key, format_text


def _two_runs() -> tuple[dict, dict]:  # type: ignore[type-arg]
    a = sample_run(
        1,
        [
            sample_image(
                "/img/web.qcow2",
                hostname="web",
                packages=[
                    ["bash", "5.2-1"],
                    ["openssl", "3.0.9-1"],
                    ["vim", "9.0-1"],
                    ["libc6", "2.36-9"],
                ],
                findings=[
                    finding("patch", "CVE-1", "high", "openssl"),
                    finding("migration", "MIG-FSTAB", "medium", "/etc/fstab"),
                ],
                exec=[["/usr/bin/bash", "aa"], ["/usr/bin/vim", "bb"]],
            ),
            sample_image("/img/old.qcow2", hostname="old"),
        ],
    )
    b = sample_run(
        2,
        [
            sample_image(
                "/img/web.qcow2",
                hostname="web",
                packages=[
                    ["bash", "5.2-1"],
                    ["openssl", "3.0.10-1"],
                    ["curl", "8.0-1"],
                    ["libc6", "2.36-1"],
                ],
                findings=[
                    finding("migration", "MIG-FSTAB", "medium", "/etc/fstab"),
                    finding("antivirus", "EICAR", "critical", "/tmp/eicar.com"),
                ],
                exec=[["/usr/bin/bash", "aa"], ["/usr/bin/vim", "cc"], ["/tmp/dropper", "dd"]],
            ),
            sample_image("/img/new.qcow2", hostname="new"),
        ],
    )
    return a, b


def test_findings_packages_executables_and_images() -> None:
    a, b = _two_runs()
    d = diff_runs(a, b)
    assert d["from_run"] == 1 and d["to_run"] == 2
    assert d["images_added"] == ["/img/new.qcow2"]
    assert d["images_gone"] == ["/img/old.qcow2"]
    (web,) = d["images"]
    assert web["changed"]
    assert [f["rule_id"] for f in web["new_findings"]] == ["EICAR"]
    assert [f["rule_id"] for f in web["resolved_findings"]] == ["CVE-1"]
    assert [p["name"] for p in web["packages_added"]] == ["curl"]
    assert [p["name"] for p in web["packages_removed"]] == ["vim"]
    # Debian ordering: 3.0.10 is newer than 3.0.9 (a string compare would say older).
    assert [(p["name"], p["from"], p["to"]) for p in web["packages_upgraded"]] == [
        ("openssl", "3.0.9-1", "3.0.10-1")
    ]
    assert [p["name"] for p in web["packages_downgraded"]] == ["libc6"]
    execs = {e["path"]: e["change"] for e in web["new_executables"]}
    assert execs == {"/tmp/dropper": "new", "/usr/bin/vim": "modified"}
    s = d["summary"]
    assert s["new_findings"] == 1 and s["resolved_findings"] == 1
    assert s["new_findings_by_severity"] == {"critical": 1}
    assert s["images_changed"] == 1
    text = format_text(d)
    assert "+ [critical] EICAR /tmp/eicar.com" in text and "+ image /img/new.qcow2" in text


def test_unchanged_image_reports_nothing() -> None:
    a, _ = _two_runs()
    d = diff_runs(a, a)
    assert not any(i["changed"] for i in d["images"])
    assert d["summary"]["new_findings"] == 0 and not d["images_added"]


def test_several_versions_of_one_package_and_status_change() -> None:
    a = sample_run(
        1, [sample_image("/i", packages=[["linux-image", "6.1.1"], ["linux-image", "6.1.2"]])]
    )
    b = sample_run(
        2, [sample_image("/i", packages=[["linux-image", "6.1.2"], ["linux-image", "6.1.3"]])]
    )
    b["images"][0]["status"] = "partial"
    (img,) = diff_runs(a, b)["images"]
    assert [p["version"] for p in img["packages_removed"]] == ["6.1.1"]
    assert [p["version"] for p in img["packages_added"]] == ["6.1.3"]
    assert img["status"] == {"from": "ok", "to": "partial"}


def test_no_manifest_in_older_run_is_not_all_new() -> None:
    a = sample_run(1, [sample_image("/i")])
    b = sample_run(2, [sample_image("/i", exec=[["/bin/sh", "aa"]])])
    (img,) = diff_runs(a, b)["images"]
    assert img["new_executables"] == [] and img["notes"]


def test_findings_without_fingerprint_get_a_stable_key() -> None:
    f = {"check": "patch", "rule_id": "CVE-2", "target": "zlib", "severity": "low"}
    assert finding_key(f) == finding_key(dict(f)) and finding_key(f).startswith("k:")
    assert finding_key({**f, "target": "zlib1g"}) != finding_key(f)


def test_data_volume_findings_are_compared() -> None:
    a = sample_run(1, [sample_image("/d")])
    b = sample_run(2, [sample_image("/d")])
    b["images"][0]["sections"]["data_volumes"] = [
        {"device": "/dev/sdb1", "findings": [finding("antivirus", "X", "high", "/x")]}
    ]
    (img,) = diff_runs(a, b)["images"]
    assert [f["root"] for f in img["new_findings"]] == ["/dev/sdb1"]


def test_text_output_escapes_terminal_controls() -> None:
    a = sample_run(1, [sample_image("/i")])
    b = sample_run(2, [sample_image("/i", findings=[finding("av", "R", "high", "/x\x1b[2J")])])
    assert "\x1b" not in format_text(diff_runs(a, b))

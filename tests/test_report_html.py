"""HTML report: self-contained, guest strings escaped; real headless Chromium over DevTools."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nightly_samples import HOSTILE_HOSTNAME, HOSTILE_PATH, finding, sample_image, sample_run

from vmscan.diff import diff_runs
from vmscan.report.html import render_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: A reason string carrying guest-controlled text (a hostile socket path): stays text.
HOSTILE_CLAMD_REASON = "clamd at unix:/x<img src=x onerror=window.__xss=4> does not answer"


def _doc() -> dict[str, Any]:
    older = sample_run(1, [sample_image("/img/web.qcow2", packages=[["bash", "5.1"]])])
    doc = sample_run(
        2,
        [
            sample_image(
                "/img/web.qcow2",
                hostname=HOSTILE_HOSTNAME,
                packages=[["bash", "5.2"], ["nc", "1"]],
                migration="blocked",
                findings=[
                    finding("patch", "CVE-2024-1", "medium", "openssl"),
                    finding("antivirus", "EICAR", "critical", HOSTILE_PATH),
                    finding("migration", "MIG-1", "low", "/etc/fstab"),
                    finding("patch", "CVE-2024-2", "high", "zlib"),
                ],
                exec=[["/usr/bin/nc", "aa"]],
            ),
            sample_image(
                "/img/db.qcow2",
                hostname="db",
                migration="ready",
                findings=[finding("patch", "CVE-2024-3", "info", "libc6")],
            ),
            sample_image('/img/"><b>bold</b>.qcow2', error="cannot open"),
        ],
    )
    doc["images"][2]["status"] = "error"
    doc["images"][2]["errors"] = ['qemu says "><img src=x onerror=window.__xss=3>']
    doc["images"][0]["sections"]["antivirus"] = {
        "status": "incomplete",
        "not_scanned": {"counts": {"too_large": 2, "<i>odd</i>": 1}, "paths": [], "more": 0},
        "incomplete_reasons": ["clamd restarted"],
    }
    doc["images"][0]["roots"][0]["plugins"] = [
        {"name": "os/dpkg", "status": "succeeded", "reason": ""},
        {"name": "antivirus", "status": "failed", "reason": HOSTILE_CLAMD_REASON},
    ]
    doc["sections"]["changes"] = diff_runs(older, doc)
    doc["sections"]["trend"] = [
        {"run": 1, "images": 1, "findings_by_severity": {"high": 2, "low": 1}},
        {
            "run": 2,
            "images": 3,
            "findings_by_severity": {"critical": 1, "high": 1, "medium": 1, "low": 1, "info": 1},
        },
    ]
    doc["sections"]["nightly"] = {"scanned": 2, "skipped_unchanged": 1, "failed": 1}
    doc["sections"]["license_fleet"] = {
        "vms": 2,
        "os_editions": [
            {
                "os": "Debian GNU/Linux 12",
                "edition_id": "",
                "count": 2,
                "vms": ["/img/web.qcow2", "/img/db.qcow2"],
            }
        ],
        "watched": [
            {
                "id": "mssql",
                "product": "SQL Server",
                "edition": "Standard",
                "count": 1,
                "vms": ["/img/db.qcow2"],
            }
        ],
    }
    return doc


def test_guest_strings_are_escaped_and_nothing_is_fetched() -> None:
    html = render_html(_doc())
    assert HOSTILE_HOSTNAME not in html
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html
    assert "<img" not in html and "<b>bold</b>" not in html and "<i>odd</i>" not in html
    assert "Antivirus coverage" in html and "2 not scanned (too_large)" in html
    assert html.count("<script") == 1
    # No network: no external src/href, no CSS url(), no @import.
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html)
    assert "url(" not in html and "@import" not in html
    assert "Content-Security-Policy" in html
    for needle in (
        "fleet-overview",
        "chart-status",
        "chart-severity",
        "chart-check",
        "chart-os",
        "chart-migration",
        "chart-licence",
        "chart-trend",
        "chart-licence-watched",
        "SQL Server Standard",
    ):
        assert needle in html


def test_empty_run_renders() -> None:
    html = render_html(sample_run(1, []))
    assert "Fleet overview" in html and "baseline" in html


# ----------------------------------------------------------------------------------------
# Real headless Chromium driven over the DevTools protocol


class DevTools:
    """A minimal CDP client over one page target; records errors as they arrive."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params or {}}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return msg
        raise TimeoutError(method)

    def evaluate(self, expr: str) -> Any:
        res = self.send(
            "Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in res:
            raise RuntimeError(f"page exception: {res['exceptionDetails']}")
        return res["result"].get("value")

    def errors(self) -> list[dict[str, Any]]:
        out = []
        for ev in self.events:
            m = ev.get("method")
            p = ev.get("params", {})
            console_error = m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert")
            log_error = m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error"
            if m == "Runtime.exceptionThrown" or console_error or log_error:
                out.append(ev)
        return out


@pytest.fixture(scope="module")
def browser() -> Iterator[str]:
    """A headless Chromium; yields the DevTools HTTP endpoint."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian package chromium)")
    pytest.importorskip("websocket", reason="websocket-client is not installed")
    udd = tempfile.mkdtemp(prefix="vmscan-chromium-")
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={udd}",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
            "--window-size=1280,1600",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = Path(udd) / "DevToolsActivePort"
        for _ in range(600):
            if port_file.exists() and port_file.read_text().strip():
                break
            if proc.poll() is not None:
                pytest.fail(f"chromium exited with {proc.returncode}")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(udd, ignore_errors=True)


def _open(endpoint: str, url: str) -> DevTools:
    with urllib.request.urlopen(f"{endpoint}/json/list", timeout=10) as resp:
        targets = json.loads(resp.read())
    page = next(t for t in targets if t.get("type") == "page")
    cdp = DevTools(page["webSocketDebuggerUrl"])
    for domain in ("Runtime", "Log", "Page"):
        cdp.send(f"{domain}.enable")
    cdp.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 1600, "deviceScaleFactor": 1, "mobile": False},
    )
    cdp.events.clear()
    cdp.send("Page.navigate", {"url": url})
    cdp.wait_event("Page.loadEventFired")
    return cdp


def _png_pixels_distinct(png: bytes) -> tuple[int, int, int]:
    """(width, height, distinct byte values of the decompressed image data)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        ctype = png[pos + 4 : pos + 8]
        data = png[pos + 8 : pos + 8 + length]
        if ctype == b"IHDR":
            width, height = struct.unpack(">II", data[:8])
        elif ctype == b"IDAT":
            idat += data
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


def test_report_in_headless_chromium(browser: str, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(_doc()), encoding="utf-8")
    cdp = _open(browser, page.as_uri())
    try:
        assert cdp.evaluate("document.readyState") == "complete"
        boxes = cdp.evaluate("""JSON.stringify(Object.fromEntries(
            ['#fleet-overview', '#chart-status svg', '#chart-severity svg', '#chart-check svg',
             '#chart-os svg', '#chart-migration svg', '#chart-licence svg', '#chart-trend svg',
             '#image-table', '#vm-0 table.findings'].map(s => {
               const e = document.querySelector(s);
               if (!e) return [s, null];
               const r = e.getBoundingClientRect(), cs = getComputedStyle(e);
               return [s, [r.x, r.y, r.width, r.height, cs.visibility, cs.display]];
            })))""")
        for sel, box in json.loads(boxes).items():
            assert box is not None, f"{sel} missing"
            x, _y, w, h, vis, disp = box
            assert w > 50 and h > 20 and vis == "visible" and disp != "none", (sel, box)
            assert x >= 0 and x + w <= 1280 + 1, f"{sel} overflows the page: {box}"
        # First on the page: one red banner per image not fully scanned (the failed
        # antivirus of vm-0, the unscannable vm-2), then the fleet overview.
        banners = json.loads(
            cdp.evaluate("""JSON.stringify(Array.from(
                document.querySelectorAll('#not-complete .banner')).map(b => {
                  const r = b.getBoundingClientRect(), cs = getComputedStyle(b);
                  return [b.id, r.y, r.height, cs.backgroundColor, cs.display, b.innerText,
                          b.querySelector('a').getAttribute('href')];
                }))""")
        )
        assert [b[0] for b in banners] == ["banner-vm-0", "banner-vm-2"]
        assert banners[0][1] < 200  # the top of the page
        for _id, _y, height, color, display, _text, _href in banners:
            assert height > 20 and display != "none" and color == "rgb(183, 28, 28)"
        assert "antivirus did not complete on /dev/sda1 (failed)" in banners[0][5]
        assert HOSTILE_CLAMD_REASON in banners[0][5]  # escaped, shown as text
        assert "could not be scanned" in banners[1][5]
        assert [b[6] for b in banners] == ["#vm-0", "#vm-2"]
        fleet = json.loads(boxes)["#fleet-overview"]
        assert banners[-1][1] + banners[-1][2] <= fleet[1] < 600  # the overview follows
        # Hostile guest strings stayed text.
        assert cdp.evaluate("typeof window.__xss") == "undefined"
        assert cdp.evaluate("document.querySelectorAll('img').length") == 0
        assert cdp.evaluate("document.scripts.length") == 1
        assert cdp.evaluate("document.querySelector('#vm-0 td.hostname').textContent") == (
            HOSTILE_HOSTNAME
        )
        # Sorting: click Severity (ascending), then again (descending).
        order = """Array.from(document.querySelectorAll('#vm-0 table.findings tbody tr'))
                     .map(r => Number(r.dataset.sev))"""
        cdp.evaluate("document.querySelector('#vm-0 table.findings th').click()")
        assert cdp.evaluate(order) == [2, 3, 4, 5]
        cdp.evaluate("document.querySelector('#vm-0 table.findings th').click()")
        assert cdp.evaluate(order) == [5, 4, 3, 2]
        # Filtering: text, then minimum severity.
        visible = """Array.from(document.querySelectorAll('#vm-0 table.findings tbody tr'))
                       .filter(r => !r.hidden).length"""
        cdp.evaluate("""(() => { const i = document.querySelector('#vm-0 .f-text');
                        i.value = 'cve-2024'; i.dispatchEvent(new Event('input')); })()""")
        assert cdp.evaluate(visible) == 2
        cdp.evaluate("""(() => { const i = document.querySelector('#vm-0 .f-text');
                        i.value = ''; i.dispatchEvent(new Event('input'));
                        const s = document.querySelector('#vm-0 .f-sev');
                        s.value = '4'; s.dispatchEvent(new Event('change')); })()""")
        assert cdp.evaluate(visible) == 2
        assert "2 of 4 shown" in cdp.evaluate(
            "document.querySelector('#vm-0 .f-count').textContent"
        )
        shot = cdp.send("Page.captureScreenshot", {"format": "png"})
        png = base64.b64decode(shot["data"])
        (tmp_path / "report.png").write_bytes(png)
        if os.environ.get("VMSCAN_KEEP_SCREENSHOT"):
            Path(os.environ["VMSCAN_KEEP_SCREENSHOT"]).write_bytes(png)
        width, height, distinct = _png_pixels_distinct(png)
        assert (width, height) == (1280, 1600)
        assert distinct > 32, "the screenshot looks blank"
        assert cdp.errors() == [], f"console errors: {cdp.errors()}"
    finally:
        cdp.ws.close()

"""The HTML report page, rendered from a hand-built report and loaded in real headless Chromium.

The chart JS must run without errors and draw one loss segment per attempt and one marker
per interruption (read back from the DOM that ``--dump-dom`` prints), the screenshot must
show a page rather than a blank one, and the page must fetch nothing and escape what it shows.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from spotsafe._telemetry._html import render_html

PAGE = "spotsafe-report-page.html"
SCREENSHOT_COPY = Path("/tmp/report-screenshot.png")
T0 = 1_700_000_000.0


# ---------------------------------------------------------------------------------------
# A realistic report: 3 attempts; attempt 1 is interrupted by a signal at step 40 and
# attempt 2 resumes from the checkpoint at step 30 (steps 31..40 are trained twice);
# attempt 2 is killed at step 90 and attempt 3 resumes from step 80 and ends at 120.
# ---------------------------------------------------------------------------------------

def _loss(step: int) -> float:
    return round(2.3 * math.exp(-step / 45) + 0.35 + 0.04 * math.sin(step * 1.7), 4)


def build_report() -> dict:
    points: list[list] = []
    for attempt, (first, last) in enumerate([(1, 40), (31, 90), (81, 120)], 1):
        for step in range(first, last + 1):
            # replayed steps land on slightly different values (other data order after resume)
            value = _loss(step) + (0.015 if attempt == 2 and step <= 40 else 0.0)
            points.append([step, value, attempt])
    points[5][1] = None  # a step whose loss was not logged: skipped, not drawn
    checkpoints = []
    for i, step in enumerate([10, 20, 30, 50, 60, 70, 80, 100, 110, 120]):
        attempt = 1 if step <= 30 else 2 if step <= 80 else 3
        checkpoints.append({"ts": T0 + 1.0 + i * 9.5 + (attempt - 1) * 4.0, "step": step,
                            "reason": "final" if step == 120 else "policy",
                            "stall_s": 0.0008 + 0.0004 * (i % 4) + (0.004 if i == 3 else 0.0),
                            "persist_s": 0.011 + 0.002 * (i % 3), "attempt": attempt})
    return {
        "root": "runs/demo",
        "attempts": 3,
        "wall_s": 131.7,
        "interruptions": {"total": 2, "by_source": {"signal": 1, "killed": 1}},
        "crashes": 0,
        "drills": 2,
        "resume": {"restarts": 2, "resumed": 2, "rate": 1.0, "fallbacks": 0},
        "replayed": {"steps": {"mean": 10.0, "worst": 10, "total": 20},
                     "seconds": {"mean": 0.95, "worst": 1.1, "total": 1.9}},
        "per_interruption": [
            {"attempt": 1, "source": "signal", "ts": T0 + 40.2, "step": 40, "resumed_step": 30,
             "replayed_steps": 10, "replayed_s": 0.8, "restart_s": 2.4, "tier": None},
            {"attempt": 2, "source": "killed", "ts": T0 + 95.0, "step": 90, "resumed_step": 80,
             "replayed_steps": 10, "replayed_s": 1.1, "restart_s": 3.1, "tier": None},
        ],
        "checkpoints": {"count": 10, "stall_s": {"median": 0.0012, "p95": 0.0048},
                        "persist_s": {"median": 0.013, "p95": 0.015},
                        "upload_s": {"median": None, "p95": None}},
        "checkpoint_list": checkpoints,
        "restart_lost_s": 5.5,
        "useful_s": 118.4,
        "goodput": 0.899,
        "cost": {"spot_price": 1.1, "on_demand_price": 3.06, "wall_h": 0.0366, "on_demand_h": 0.0329,
                 "spot_cost": 0.0402, "on_demand_cost": 0.1006, "savings": 0.0604, "savings_fraction": 0.6},
        "loss": {"name": "loss", "points": points},
    }


def empty_report() -> dict:
    return {"root": "runs/empty", "attempts": 1, "wall_s": 3.2,
            "interruptions": {"total": 0, "by_source": {}}, "crashes": 0, "drills": 0,
            "resume": {"restarts": 0, "resumed": 0, "rate": None, "fallbacks": 0},
            "replayed": {"steps": {"mean": None, "worst": None, "total": 0},
                         "seconds": {"mean": None, "worst": None, "total": 0.0}},
            "per_interruption": [], "checkpoints": {"count": 0}, "checkpoint_list": [],
            "restart_lost_s": 0.0, "useful_s": None, "goodput": None, "cost": None,
            "loss": {"name": "loss", "points": []}}


# ---------------------------------------------------------------------------------------
# Chromium
# ---------------------------------------------------------------------------------------

def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not on PATH: CI must install it (apt-get install -y chromium)", pytrace=False)
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return exe


def run_chromium(tmp_path: Path, page: Path, *extra: str) -> subprocess.CompletedProcess:
    """One headless Chromium run on ``page``; its whole process group is killed afterwards."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
           "--disable-extensions", "--disable-background-networking",
           "--enable-logging=stderr", "--v=0", *extra, page.as_uri()]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "HOME": str(tmp_path)})
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"chromium did not finish within 60 s:\n{err[-3000:]}")
    finally:
        try:  # helpers (zygote, crashpad) that outlived the browser
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{err[-3000:]}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def page_errors(stderr: str) -> list[str]:
    """Console messages and uncaught errors from the page, out of Chromium's own log noise."""
    return [line for line in stderr.splitlines()
            if "Uncaught" in line or ("CONSOLE" in line and PAGE in line)]


class Tags(HTMLParser):
    """Every start tag of a document, with its attributes, and the text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def first(self, tag: str, **attrs) -> dict:
        for t, a in self.tags:
            if t == tag and all(a.get(k) == v for k, v in attrs.items()):
                return a
        raise AssertionError(f"no <{tag} {attrs}> in the page")

    def count(self, tag: str, **attrs) -> int:
        return sum(1 for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items()))


def png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and the decompressed (still filtered) image data of a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, size = 8, [], None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    assert size is not None and idat
    return size[0], size[1], zlib.decompress(b"".join(idat))


def write_page(tmp_path: Path, report: dict) -> Path:
    page = tmp_path / PAGE
    page.write_text(render_html(report), encoding="utf-8")
    return page


# ---------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------

def test_page_draws_the_loss_curve_across_restarts(tmp_path):
    report = build_report()
    page = write_page(tmp_path, report)
    drawable = sum(1 for p in report["loss"]["points"] if p[1] is not None)

    dom = run_chromium(tmp_path, page, "--dump-dom")
    assert not page_errors(dom.stderr), "\n".join(page_errors(dom.stderr))
    tags = Tags(dom.stdout)
    body = tags.first("body")
    assert "data-errors" not in body, body["data-errors"]
    assert body.get("data-drawn") == str(drawable) == "139"
    svg = tags.first("svg", id="loss-chart")
    assert svg.get("data-points") == str(drawable)
    assert svg.get("data-segments") == "3"
    assert svg.get("data-markers") == "2"
    segments = [a for t, a in tags.tags if t == "path" and a.get("class") == "seg"]
    assert [s["data-attempt"] for s in segments] == ["1", "2", "3"]
    assert [s["data-points"] for s in segments] == ["39", "60", "40"]
    assert all(re.fullmatch(r"M[\d.]+ [\d.]+(L[\d.]+ [\d.]+)+", s["d"]) for s in segments)
    assert len({s["stroke"] for s in segments}) == 3  # a distinct colour per attempt
    assert [a["data-step"] for t, a in tags.tags if t == "g" and a.get("class") == "marker"] == ["40", "90"]
    text = " ".join(tags.text)
    assert "signal" in text and "killed" in text and "attempt 2 (steps 31–90)" in text
    assert tags.first("svg", id="stall-chart").get("data-points") == "10"
    assert tags.count("circle") >= 10 + 3

    shot = tmp_path / "report.png"
    run_chromium(tmp_path, page, f"--screenshot={shot}", "--window-size=1200,2400", "--hide-scrollbars")
    assert shot.exists() and shot.stat().st_size > 20_000, shot.stat().st_size if shot.exists() else "missing"
    shutil.copyfile(shot, SCREENSHOT_COPY)
    width, height, raw = png_pixels(shot)
    assert (width, height) == (1200, 2400)
    assert len(set(raw)) > 100, "the screenshot is (nearly) one flat colour"

    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    blank_shot = tmp_path / "blank.png"
    run_chromium(tmp_path, blank, f"--screenshot={blank_shot}", "--window-size=1200,2400", "--hide-scrollbars")
    assert shot.stat().st_size > 5 * blank_shot.stat().st_size


def test_page_without_metrics_or_prices(tmp_path):
    page = write_page(tmp_path, empty_report())
    dom = run_chromium(tmp_path, page, "--dump-dom")
    assert not page_errors(dom.stderr), "\n".join(page_errors(dom.stderr))
    tags = Tags(dom.stdout)
    body = tags.first("body")
    assert "data-errors" not in body, body["data-errors"]
    assert body.get("data-drawn") == "0"
    assert tags.count("svg") == 0
    text = " ".join(tags.text)
    assert "no metrics logged" in text
    assert "--spot-price" in text and "--on-demand-price" in text
    assert "no interruptions" in text


def hostile_report() -> dict:
    report = build_report()
    report["root"] = 'runs/"><img src=x onerror=alert(2)>'
    report["per_interruption"][0]["source"] = EVIL
    report["interruptions"]["by_source"] = {EVIL: 1, "killed": 1}
    report["loss"]["name"] = "<b>loss</b><!--"
    report["loss"]["points"].append([121, float("nan"), 3])  # NaN is not JSON: must not break the page
    return report


EVIL = "<script>alert(1)</script>"


def test_page_fetches_nothing_and_escapes_what_it_shows():
    text = render_html(hostile_report())
    data = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S).group(1)
    outside = text.replace(data, "")

    # Nothing off-page: no element points anywhere, the CSS loads nothing, and the only
    # URL in the whole page is the SVG namespace name the JS passes to createElementNS.
    tags = Tags(text)
    assert [(t, a) for t, a in tags.tags if {"src", "href", "srcset", "data", "poster"} & a.keys()] == []
    assert tags.count("link") == tags.count("img") == tags.count("iframe") == tags.count("object") == 0
    assert not re.search(r"@import|url\(", text, re.I)
    assert set(re.findall(r"https?://[^\s\"'<>)]*", text)) <= {"http://www.w3.org/2000/svg"}

    # Escaped wherever it is shown ...
    assert EVIL not in outside and "<img" not in outside and "<b>" not in outside
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in outside
    assert "runs/&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in outside
    # ... and the embedded JSON can neither close its <script> nor open a comment in it.
    assert "</" not in data and "<!--" not in data
    assert outside.count("<script") == 3 and text.count("</script>") == 3
    embedded = json.loads(data)
    assert embedded["per_interruption"][0]["source"] == EVIL
    assert embedded["loss"]["name"] == "<b>loss</b><!--"
    assert embedded["loss"]["points"][-1] == [121, None, 3]


def test_hostile_names_load_cleanly(tmp_path):
    page = write_page(tmp_path, hostile_report())
    dom = run_chromium(tmp_path, page, "--dump-dom")
    assert not page_errors(dom.stderr), "\n".join(page_errors(dom.stderr))
    tags = Tags(dom.stdout)
    assert "data-errors" not in tags.first("body")
    assert tags.first("body").get("data-drawn") == "139"
    assert tags.first("svg", id="loss-chart").get("data-markers") == "2"
    assert tags.count("img") == 0 and tags.count("b") == 0
    shown = " ".join(tags.text)
    assert EVIL in shown and "<b>loss</b><!-- across restarts" in shown  # as text

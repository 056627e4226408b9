"""The HTML report in a real browser (headless Chromium): it renders, logs nothing to the console, and runs no injected script.

How the console is read: ``--enable-logging=stderr --v=0`` makes headless Chromium print every console message
(console.*, uncaught errors, Content-Security-Policy violations) as an ``INFO:CONSOLE`` line on stderr. The report
has no scripts, so any such line is a fault. Broken images log nothing by themselves, so the test serves a copy of
the page with a small checker placed before the page's CSP (a policy applies only to what follows it): on load it
console.error()s every image that failed to decode and then logs a sentinel, which proves the check ran. A page with
a deliberate console.error, a broken image and an external image is the negative control: all three must be caught.

Skipped when Chromium is absent, unless FLOWOPD_REQUIRE_BROWSER=1 (CI), where that is a failure.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_fixtures import XSS, make_mini_run, make_real_run

from flowopd.benchmarks.html_report import render_report
from flowopd.benchmarks.report import SHIPPED_BASELINES, build_report

SENTINEL = "flowopd-check-done"
CHECKER = (
    "<script>window.addEventListener('load', () => { let n = 0; for (const i of document.images) { n++;"
    " if (!i.complete || !i.naturalWidth) console.error('broken image: ' + i.src.slice(0, 60)); }"
    f" console.log('{SENTINEL} images=' + n); }});</script>"
)
CONSOLE = re.compile(r':CONSOLE[:(][^\]]*\] "(.*)", source: ')


@pytest.fixture(scope="module")
def chromium() -> str:
    found = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if found is None:
        if os.environ.get("FLOWOPD_REQUIRE_BROWSER") == "1":
            pytest.fail("FLOWOPD_REQUIRE_BROWSER=1 but no chromium on PATH; install it (apt-get install chromium)")
        pytest.skip("chromium not installed (FLOWOPD_REQUIRE_BROWSER=1 makes this a failure)")
    return found


def run_chromium(binary: str, page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        f"--user-data-dir={tmp / 'profile'}",
        *args,
        page.resolve().as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def with_checker(html: str) -> str:
    """The page with the image checker inserted right after <head>, before the page's own CSP meta."""
    assert html.count("<head>") == 1
    return html.replace("<head>", "<head>" + CHECKER, 1)


def console_lines(stderr: str) -> tuple[list[str], bool]:
    """(console messages other than the sentinel, whether the sentinel came)."""
    msgs = CONSOLE.findall(stderr)
    return [m for m in msgs if not m.startswith(SENTINEL)], any(m.startswith(SENTINEL) for m in msgs)


def screenshot(binary: str, html: str, tmp: Path, name: str) -> tuple[Path, list[str], bool]:
    page = tmp / f"{name}.html"
    page.write_text(with_checker(html))
    png = tmp / f"{name}.png"
    res = run_chromium(binary, page, tmp, f"--screenshot={png}", "--window-size=1280,2400")
    assert png.is_file(), res.stderr[-2000:]
    errors, checked = console_lines(res.stderr)
    return png, errors, checked


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("browser-runs")
    runs = [
        make_mini_run(root, "eval-student", "mini-student", 0.8),
        make_mini_run(root, "eval-base", "mini-base", 0.3, shift=1, train_log=False),
        make_real_run(
            root, "eval-sd", "sd3.5-m-opd", {"geneval/overall": 0.9, "ocr/accuracy": 0.88, "deqa/deqa": 4.3, "pickscore/pickscore": 22.9}
        ),
    ]
    return render_report(build_report(runs, SHIPPED_BASELINES / "flow-opd-paper.csv", baseline_run=runs[1]))


def test_report_renders_and_logs_nothing(chromium, report, tmp_path):
    png, errors, checked = screenshot(chromium, report, tmp_path, "report")
    assert checked, "the image checker did not run"
    assert errors == []
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape == (2400, 1280, 3)
    grey = img.mean(axis=2)
    colours = len(np.unique(img.reshape(-1, 3)[::7], axis=0))
    inked = float((grey < 200).mean())
    assert grey.std() > 20 and colours > 100 and inked > 0.03, (grey.std(), colours, inked)  # text, tables and colour, not a blank page
    keep = os.environ.get("FLOWOPD_SCREENSHOT_DIR")
    if keep:
        shutil.copy(png, Path(keep) / "report.png")


def test_negative_control_console_error_broken_and_external_images_are_caught(chromium, report, tmp_path):
    bad = report.replace("<head>", "<head><script>console.error('deliberate failure')</script>", 1)
    bad = bad.replace("<main>", '<main><img src="data:image/png;base64,AAAA"><img src="https://example.invalid/x.png">', 1)
    _, errors, checked = screenshot(chromium, bad, tmp_path, "bad")
    assert checked
    joined = "\n".join(errors)
    assert "deliberate failure" in joined
    assert "broken image: data:image/png;base64,AAAA" in joined
    assert "https://example.invalid/x.png" in joined and "Content Security Policy" in joined  # blocked by the page's CSP


def dump_dom(binary: str, html: str, tmp: Path, name: str) -> str:
    page = tmp / f"{name}.html"
    page.write_text(html)
    res = run_chromium(binary, page, tmp, "--dump-dom")
    assert "<html" in res.stdout, res.stderr[-2000:]
    return res.stdout


def test_a_prompt_with_a_script_is_shown_as_text_and_never_runs(chromium, report, tmp_path):
    no_csp = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", report)  # test the escaping alone
    assert no_csp != report
    dom = dump_dom(chromium, no_csp, tmp_path, "xss")
    assert "<title>flowopd leaderboard</title>" in dom and "pwned" not in re.search(r"<title>(.*?)</title>", dom).group(1)
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt; a red &lt;b&gt;cube&lt;/b&gt;" in dom  # shown as text
    assert "<script" not in dom.lower()
    # the control: the same prompt written unescaped does run, so the check above can fail
    naive = "<!DOCTYPE html><html><head><title>flowopd leaderboard</title></head><body><q>" + XSS + "</q></body></html>"
    dom = dump_dom(chromium, naive, tmp_path, "naive")
    assert "<title>pwned</title>" in dom

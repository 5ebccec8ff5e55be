"""The whole loop in a real browser: ``streamlit run app.py`` + Debian's Chromium via Playwright.

Opens the app, checks the demo is loaded, clicks a scan position and labels it
(mouse and keyboard shortcut), paints a region on the canvas, answers a round
of suggestions like a user who knows the truth (the simulation's ground
truth), trains, reads the map, clicks on it, downloads the PNG, and saves a
screenshot of every page.

Environment (all optional):

``POLMAP_BROWSER_PRESET``   simulated scan to use (default ``tiny``)
``POLMAP_BROWSER_LABELS``   suggestions answered (default 12)
``POLMAP_BROWSER_EPOCHS`` / ``POLMAP_BROWSER_MEMBERS``  training settings (default 4 / 2)
``POLMAP_SCREENSHOT_DIR``   where the screenshots go (default ``artifacts/screenshots``, git-ignored)

The screenshots in ``docs/screenshots`` (shown by the README) come from this
test run on the demo scan with a better-trained model::

    POLMAP_BROWSER_PRESET=demo POLMAP_BROWSER_LABELS=40 POLMAP_BROWSER_EPOCHS=30 \
    POLMAP_BROWSER_MEMBERS=3 POLMAP_SCREENSHOT_DIR=docs/screenshots \
    .venv/bin/python -m pytest tests/test_browser.py

(an ordinary ``make test`` writes elsewhere, so it never replaces them with
the tiny scan's).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
PRESET = os.environ.get("POLMAP_BROWSER_PRESET", "tiny")
N_LABELS = int(os.environ.get("POLMAP_BROWSER_LABELS", "12"))
EPOCHS = int(os.environ.get("POLMAP_BROWSER_EPOCHS", "4"))
MEMBERS = int(os.environ.get("POLMAP_BROWSER_MEMBERS", "2"))
SHOTS = Path(os.environ.get("POLMAP_SCREENSHOT_DIR", str(REPO / "artifacts" / "screenshots")))

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not Path(CHROMIUM).exists():  # pragma: no cover - depends on the machine
    pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) for the browser test",
                allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """``streamlit run app.py`` on a free localhost port, tiny demo, temporary workspace folder."""
    tmp = tmp_path_factory.mktemp("browser")
    port = _free_port()
    env = dict(os.environ)
    env.update(
        POLMAP_DEMO_PRESET=PRESET,
        POLMAP_WORKSPACE_DIR=str(tmp / "workspaces"),
        POLMAP_DATA_ROOT=str(tmp / "data"),
        POLMAP_CACHE=os.environ.get("POLMAP_CACHE", str(tmp / "cache")),
        POLMAP_MAX_UPLOAD_MB="2",
    )
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited: {(tmp / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("streamlit did not start in 120 s")
    yield {"url": url, "env": env, "log": tmp / "server.log"}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def truth(server) -> np.ndarray:
    """The demo's ground-truth class map (what the simulated user "knows")."""
    os.environ.setdefault("POLMAP_CACHE", server["env"]["POLMAP_CACHE"])
    from polmap import simulate
    from polmap.io import open_dataset

    with open_dataset(simulate.demo_path(preset=PRESET)) as ds:
        return np.asarray(ds.ground_truth.label_map)


def _text(page) -> str:
    return page.evaluate("document.body.innerText")


def _count(page, cls: str) -> int:
    m = re.search(rf"(?m)^{re.escape(cls)}: (\d+)$", _text(page))
    return int(m.group(1)) if m else -1


def _wait_count(page, cls: str, above: int, timeout: float = 30.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        n = _count(page, cls)
        if n > above:
            return n
        time.sleep(0.1)
    raise AssertionError(f"sidebar count of {cls!r} stayed at {_count(page, cls)} (wanted > {above})")


def _no_traceback(page) -> None:
    txt = _text(page)
    assert "Traceback" not in txt and "StreamlitAPIException" not in txt and "multiple elements" not in txt, txt[-2000:]


def _settle(page, seconds: float = 1.0) -> None:
    """Let the page finish rerunning (no 'Running' indicator), then a little more for charts to draw."""
    deadline = time.time() + 120
    while time.time() < deadline:
        if page.locator("[data-testid='stStatusWidget']").count() == 0:
            break
        time.sleep(0.2)
    time.sleep(seconds)


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    _settle(page)
    page.locator("h1").first.scroll_into_view_if_needed()
    time.sleep(0.3)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def _cell(box: dict, shape: tuple[int, int], r: int, c: int) -> tuple[float, float]:
    R, C = shape
    return box["x"] + (c + 0.5) / C * box["width"], box["y"] + (r + 0.5) / R * box["height"]


def _nav(page, title: str) -> None:
    page.locator("[data-testid='stSidebarNav'] a", has_text=title).first.click()
    page.locator("h1", has_text=title).wait_for(timeout=60000)
    _settle(page, 0.5)


@contextlib.contextmanager
def _diagnosed(page, server) -> Iterator[None]:
    """On failure, add what the page showed and the server's log to the error (CI shows nothing else)."""
    try:
        yield
    except Exception as exc:
        try:
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "failure.png"), full_page=True)
            txt = _text(page)[-3000:]
        except Exception as e2:  # noqa: BLE001 - the page itself may be gone; the real error follows
            txt = f"(page unreadable: {e2})"
        log = Path(server["log"]).read_text(errors="replace")[-3000:] if Path(server["log"]).exists() else ""
        raise AssertionError(f"{exc}\n--- page text (end) ---\n{txt}\n--- server log (end) ---\n{log}") from exc


def test_the_whole_loop_in_chromium(server, truth) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1350})
        page.set_default_timeout(60000)
        with _diagnosed(page, server):
            _whole_loop(page, server["url"], truth)
        browser.close()


def _whole_loop(page, url: str, truth: np.ndarray) -> None:
    R, C = truth.shape
    names = ["none", "+x", "-x", "+y", "-y"]

    # -- Data: the demo is loaded on first open -------------------------------------
    page.goto(url)
    page.locator("h1", has_text="Data").wait_for(timeout=120000)
    page.get_by_text("Mean pattern with the detectors").wait_for(timeout=120000)
    assert f"{R} x {C} scan" in _text(page)
    _no_traceback(page)
    page.get_by_role("button", name="Got it").click()  # the first-visit hint
    page.get_by_text("The loop:").wait_for(state="detached")
    _shot(page, "data")

    # -- Label: click a position, label it with a class button and with a key -------
    _nav(page, "Label")
    chart = page.locator(".st-key-label_img .nsewdrag").first
    chart.wait_for()
    box = chart.bounding_box()
    r, c = 2, 3
    page.mouse.move(*_cell(box, (R, C), r, c))
    page.mouse.click(*_cell(box, (R, C), r, c))
    page.get_by_text(f"Position (row {r}, col {c})").wait_for()
    k = int(truth[r, c])
    before = _count(page, names[k])
    page.locator(f".st-key-clsbtn_label_{k} button").first.click()
    _wait_count(page, names[k], before)
    page.get_by_text(f"labelled {names[k]}", exact=False).first.wait_for()

    r, c = R - 3, C - 4
    page.mouse.move(*_cell(box, (R, C), r, c))
    page.mouse.click(*_cell(box, (R, C), r, c))
    page.get_by_text(f"Position (row {r}, col {c})").wait_for()
    k = int(truth[r, c])
    before = _count(page, names[k])
    page.keyboard.press(str(k + 1))  # keyboard shortcut of the class
    _wait_count(page, names[k], before)
    _no_traceback(page)
    _shot(page, "label")

    # -- Paint: a brush stroke along a run of one class labels every covered position --
    page.get_by_text("Paint regions", exact=True).click()
    canvas = page.locator("canvas").last
    canvas.wait_for()
    _settle(page)
    row, c0, c1, k = _longest_run(truth)
    page.locator(f".st-key-clsbtn_paint_{k} button").first.click()
    _settle(page)
    before = _count(page, names[k])
    cb = page.locator("canvas").last.bounding_box()
    page.mouse.move(*_cell(cb, (R, C), row, c0))
    page.mouse.down()
    for cc in range(c0, c1 + 1):
        page.mouse.move(*_cell(cb, (R, C), row, cc), steps=3)
    page.mouse.up()
    after = _wait_count(page, names[k], before)
    assert after - before >= (c1 - c0 + 1) // 2, (before, after)
    _no_traceback(page)
    _shot(page, "paint")

    # the eraser with the rectangle tool removes the labels under the rectangle
    page.get_by_text("Rectangle", exact=True).click()
    _settle(page)
    page.get_by_text("Eraser", exact=True).click()
    _settle(page)
    cb = page.locator("canvas").last.bounding_box()
    x0, y0 = _cell(cb, (R, C), row - 1, c0)
    x1, y1 = _cell(cb, (R, C), row + 1, c0 + 2)
    page.mouse.move(x0 - 3, y0 - 3)
    page.mouse.down()
    page.mouse.move(x1 + 3, y1 + 3, steps=5)
    page.mouse.up()
    deadline = time.time() + 30
    while _count(page, names[k]) >= after and time.time() < deadline:
        time.sleep(0.1)
    assert _count(page, names[k]) < after, "the eraser rectangle removed nothing"
    page.get_by_text("Eraser", exact=True).click()  # eraser off again
    _settle(page)
    _no_traceback(page)

    # -- Suggest: answer a round of suggestions one at a time ------------------------
    _answer_suggestions(page, truth, N_LABELS, shot="suggest")

    # -- Train ------------------------------------------------------------------------
    _train(page)
    assert "CPU" in _text(page) or "GPU" in _text(page)
    _shot(page, "train")

    # -- Map: see it, click on it, download the PNG -----------------------------------
    _nav(page, "Map")
    page.get_by_text("Accuracy vs ground truth").wait_for(timeout=120000)
    mchart = page.locator(".st-key-map_fig .nsewdrag").first
    mchart.wait_for()
    mb = mchart.bounding_box()
    r, c = R // 2, C // 3
    page.mouse.move(*_cell(mb, (R, C), r, c))
    page.mouse.click(*_cell(mb, (R, C), r, c))
    page.get_by_text(f"(row {r}, col {c})").first.wait_for()
    _no_traceback(page)
    page.mouse.move(1400, 1300)  # no hover label over the map in the screenshot
    _shot(page, "map")
    with page.expect_download() as dl:
        page.get_by_role("button", name="Map (PNG)").click()
    path = dl.value.path()
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # -- the conventional centre-of-mass / Friedel map beside the model's map --------
    _settle(page)
    page.get_by_text("Compare with the conventional centre-of-mass / Friedel map").click()
    toggle = page.locator(".st-key-conv_on input[type='checkbox']").first
    toggle.wait_for(state="attached")
    for _ in range(3):  # a click that lands while the page reruns can be lost: check the switch took it
        page.get_by_text("Compute the conventional map").click()
        _settle(page, 0.5)
        if toggle.is_checked():
            break
    assert toggle.is_checked(), "the 'Compute the conventional map' switch did not turn on"
    page.get_by_text("Rule: the class whose mean vector").wait_for(timeout=120000)
    _no_traceback(page)
    _settle(page, 1)
    page.get_by_text("Compare with the conventional centre-of-mass / Friedel map").evaluate(
        "el => el.scrollIntoView({block: 'start'})")
    time.sleep(0.5)
    page.screenshot(path=str(SHOTS / "conventional.png"))


def _fill(page, label: str, value: int) -> None:
    box = page.get_by_label(label)
    box.fill(str(value))
    box.press("Enter")
    _settle(page, 0.3)


def _answer_suggestions(page, truth: np.ndarray, n: int, shot: str | None = None) -> None:
    """Ask for ``n`` suggestions on the Suggest page and answer each from the truth, one at a time."""
    _nav(page, "Suggest")
    page.locator("[data-testid='stNumberInput'] input").first.fill(str(n))
    page.get_by_role("button", name="Suggest", exact=True).click()
    page.get_by_text("Suggestion 1 of").wait_for(timeout=300000)
    if shot:
        _shot(page, shot)
    for _ in range(n):
        m = re.search(r"#(\d+) at \(row (\d+), col (\d+)\)", _text(page))
        if m is None:
            break
        r, c = int(m.group(2)), int(m.group(3))
        page.locator(f".st-key-clsbtn_suggest_{int(truth[r, c])} button").first.click()
        page.wait_for_function(f"() => !document.body.innerText.includes('at (row {r}, col {c})')", timeout=30000)
    page.get_by_text("suggestions answered").wait_for()
    _no_traceback(page)


def _train(page) -> None:
    """Train on the Train page with the test's epochs and members; wait for the model."""
    _nav(page, "Train")
    page.get_by_text("Settings").click()
    _fill(page, "Epochs (most, per member)", EPOCHS)
    _fill(page, "Ensemble members (= cross-validation folds)", MEMBERS)
    page.get_by_role("button", name="Train", exact=True).click()
    page.get_by_text("Current model").wait_for(timeout=600000)
    _no_traceback(page)


def _longest_run(truth: np.ndarray) -> tuple[int, int, int, int]:
    """``(row, col_start, col_end, class)`` of the longest horizontal run of one class (at most 8 long)."""
    best = (0, 0, 0, int(truth[0, 0]))
    for r in range(1, truth.shape[0] - 1):
        start = 0
        for c in range(1, truth.shape[1] + 1):
            if c == truth.shape[1] or truth[r, c] != truth[r, start]:
                if truth[r, start] >= 0 and c - start > best[2] - best[1] + 1:
                    best = (r, start, c - 1, int(truth[r, start]))
                start = c
    r, c0, c1, k = best
    return r, c0 + 1, min(c1 - 1, c0 + 8), k


def test_upload_opens_a_scan_and_refuses_one_too_big(server, tmp_path: Path) -> None:
    """A fresh browser session: upload a small .npy (opens), then a file over the limit (a clear message)."""
    from playwright.sync_api import sync_playwright

    small = tmp_path / "small_scan.npy"
    np.save(small, np.random.default_rng(0).poisson(4, size=(5, 6, 16, 16)).astype(np.uint16))
    big = tmp_path / "big_scan.npy"
    np.save(big, np.zeros((3 * 2**20,), np.uint8))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(60000)
        page.goto(server["url"])
        page.get_by_text("Mean pattern with the detectors").wait_for(timeout=120000)
        page.get_by_role("tab", name="Upload").click()
        page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(small))
        page.get_by_role("button", name="Open upload").click()
        page.get_by_text("5 x 6 scan").first.wait_for()
        _no_traceback(page)
        page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(big))
        page.get_by_text("more than the 2 MB upload limit").wait_for()
        assert "5 x 6 scan" in _text(page)  # the session goes on with the last good scan
        _no_traceback(page)
        browser.close()


EXTERNAL = REPO.parent / "shared" / "data" / "external" / "bubbles180_tilt.h5"


@pytest.mark.skipif(not EXTERNAL.exists(), reason=f"{EXTERNAL} not present (the external scans live beside the repo)")
def test_a_scan_polmap_did_not_make(server, tmp_path: Path) -> None:
    """An external multislice file from the data folder: its truth and calibration are read, the loop runs,
    and the map shows the accuracy against its ground truth on calibrated (nm) axes."""
    import shutil

    import h5py
    from playwright.sync_api import sync_playwright

    root = Path(server["env"]["POLMAP_DATA_ROOT"])
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXTERNAL, root / EXTERNAL.name)  # a copy in the temporary data folder, never in the repo
    with h5py.File(EXTERNAL, "r") as f:
        truth = f["ground_truth"][()]
    R, C = truth.shape
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1350})
        page.set_default_timeout(60000)
        with _diagnosed(page, server):
            page.goto(server["url"])
            page.get_by_text("Mean pattern with the detectors").wait_for(timeout=120000)
            page.get_by_role("tab", name="Data folder").click()
            page.get_by_label("…or a path relative to the data folder").fill(EXTERNAL.name)
            page.get_by_label("…or a path relative to the data folder").press("Enter")
            _settle(page, 0.3)
            page.get_by_role("button", name="Open file").click()
            page.get_by_text(f"{R} x {C} scan").first.wait_for(timeout=120000)
            _no_traceback(page)
            _shot(page, "external_data")

            _answer_suggestions(page, truth, 20)
            _train(page)
            _shot(page, "external_train")

            _nav(page, "Map")
            page.get_by_text("Accuracy vs ground truth").wait_for(timeout=300000)
            txt = _text(page)
            m = re.search(r"Accuracy vs ground truth\s*\n\s*([\d.]+)%", txt)
            assert m is not None, txt[-1500:]
            acc = float(m.group(1))
            assert acc > 50.0, f"map accuracy {acc} % on the external file (5 classes: chance is about 20-30 %)"
            xtitle = page.locator(".st-key-map_fig .xtitle").first.text_content()
            assert "nm" in xtitle, xtitle  # scan_step_nm read from the file
            page.mouse.move(1400, 1300)
            _shot(page, "external_map")
            _no_traceback(page)
        browser.close()

"""The report of the hostile store (tests/unit/test_report.py) in headless Chromium: nothing planted runs,
every planted string reads literally, the table sorts, the plots load, and the page looks like a report.

Needs Debian's chromium (scripts/test.sh installs it) and playwright; Playwright's own browser
download is not used.
"""

from pathlib import Path

import pytest

from saebench.cli import main
from saebench.results.html import PALETTE
from test_report import PLACES, build_store, hostile

CHROMIUM = "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no {CHROMIUM}: scripts/test.sh installs Debian's chromium", allow_module_level=True)

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    build_store(folder, tmp_path_factory.mktemp("records"))
    assert main(["report", str(folder)]) == 0
    events = {"dialogs": [], "errors": [], "requests": []}
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1300, "height": 900})
        p = context.new_page()
        p.on("dialog", lambda d: (events["dialogs"].append(d.message), d.dismiss()))
        p.on("console", lambda m: m.type == "error" and events["errors"].append(m.text))
        p.on("pageerror", lambda exc: events["errors"].append(str(exc)))
        p.on("request", lambda r: events["requests"].append(r.url))
        p.goto((folder / "report.html").as_uri(), wait_until="load")
        p.wait_for_timeout(300)  # an onerror/onload payload would have fired by now
        yield p, events
        browser.close()


def test_nothing_planted_runs_and_nothing_is_fetched(page):
    p, events = page
    assert events["dialogs"] == [] and events["errors"] == []
    assert p.evaluate("typeof window.__pwned") == "undefined"
    assert events["requests"] and all(u.startswith(("file://", "data:")) for u in events["requests"]), events["requests"]


def test_every_planted_string_reads_literally(page):
    p, _ = page
    p.evaluate("document.querySelectorAll('details').forEach(function (d) { d.open = true; })")
    text = p.inner_text("body")
    for place in PLACES:
        assert hostile(place) in text, place


def _column(p, title):
    return p.evaluate("""(title) => {
        const th = Array.from(document.querySelectorAll('#leaderboard-table th[data-col]'))
                        .find(h => (h.title || h.textContent) === title);
        return Array.from(document.querySelectorAll('#leaderboard-table tbody tr'))
                    .map(r => r.cells[Number(th.dataset.col)].textContent);
    }""", title)


def test_clicking_a_numeric_header_sorts_ascending_then_descending_blanks_last(page):
    p, _ = page
    header = p.locator('#leaderboard-table th[title="reconstruction.explained_variance"]')
    before = _column(p, "reconstruction.explained_variance")
    header.click()
    up = _column(p, "reconstruction.explained_variance")
    assert up == ["0.6853", "0.8512", "0.9", "0.9523", "0.97", ""] != before
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert _column(p, "reconstruction.explained_variance") == ["0.97", "0.9523", "0.9", "0.8512", "0.6853", ""]
    assert header.get_attribute("aria-sort") == "descending"
    assert _column(p, "sae")[:2] == ["jumprelu", "topk-k64"]  # rows move whole
    p.locator('#leaderboard-table th[data-col="2"]').click()  # a text column sorts as text
    names = [n for n in _column(p, "sae") if not n.startswith("[sae]")]
    assert names == ["ckpt", "jumprelu", "relu-l1", "topk-k64", "topk-k8"]


def test_plots_load_and_the_screenshot_looks_like_a_report(page, tmp_path):
    import numpy as np
    from PIL import Image

    p, _ = page
    p.evaluate("window.scrollTo(0, 0)")
    images = p.locator("#frontier img")
    assert images.count() >= 6
    for i in range(images.count()):
        assert p.evaluate("(img) => img.complete && img.naturalWidth > 0 && img.naturalHeight > 0",
                          images.nth(i).element_handle())
        assert images.nth(i).is_visible()
    shot = tmp_path / "report.png"
    p.screenshot(path=str(shot), full_page=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    height, width, _ = pixels.shape
    assert 1200 <= width <= 1400 and 2000 <= height <= 20000, pixels.shape
    assert len(np.unique(pixels[::4, ::4].reshape(-1, 3), axis=0)) > 200  # not a blank page

    def near(selector, colour):
        """Pixels of the element's screen region within 12 levels of ``colour`` (#rrggbb)."""
        box = p.locator(selector).first.bounding_box()
        region = pixels[int(box["y"]):int(box["y"] + box["height"]), int(box["x"]):int(box["x"] + box["width"])]
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(region - rgb).max(-1) <= 12).sum())

    # the explained-variance plot shows the four architectures' series colours, and no fifth
    plot = '#frontier img[alt="reconstruction.explained_variance vs L0"]'
    for colour in PALETTE[:4]:
        assert near(plot, colour) >= 20, colour
    assert near(plot, PALETTE[4]) == 0
    # the strongest token of latent 3 (the planted one) is painted in the full highlight colour
    assert near(".tok", "#e6550d") > 100

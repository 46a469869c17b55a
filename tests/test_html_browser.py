"""The HTML report in a real headless browser: Debian's Chromium, started once per test
session and driven through the Chrome DevTools Protocol by Playwright (its Python package
only: the system browser, never a downloaded one). Each page must load with no console error,
no CSP violation and no request but its own file; tables sort on a click; pictures decode;
names from files (script tags, event handlers, quotes, control characters) stay text, which
the parsed page shows too (those checks need no browser and run everywhere).

Skipped, with the reason, only where no browser can be installed: `scripts/install_browser.sh`
installs Chromium (apt-get); Playwright comes with the dev extras. With
GRADCLI_BROWSER_REQUIRED=1 (CI) a missing browser fails instead. GRADCLI_SCREENSHOTS=DIR keeps
the screenshots.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from report_runs import HOSTILE_RUNS, hostile_records, render
from test_html_report import Page

from gradcli.present.escape import html, printable
from gradcli.present.trajectory import trajectory

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
# every CSP violation the page sees, recorded before any of its own script runs
WATCH_CSP = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__violations.push(e.violatedDirective + " " + (e.blockedURI || "inline"));
});
"""


def _unavailable(reason: str):
    if os.environ.get("GRADCLI_BROWSER_REQUIRED") == "1":
        pytest.fail(f"{reason} (GRADCLI_BROWSER_REQUIRED=1)")
    pytest.skip(f"{reason}; scripts/install_browser.sh and make install set it up")


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (a dev extra: make install)")
    executable = chromium()
    if executable is None:
        _unavailable("no Chromium on PATH (Debian: apt-get install chromium)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=executable, args=CHROMIUM_FLAGS, headless=True
        )
        context.add_init_script(WATCH_CSP)
        yield context
        context.close()


class Opened:
    """A page opened from its file, with what it did while loading."""

    def __init__(self, context, path: Path) -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page = page = context.new_page()
        page.set_viewport_size({"width": 1100, "height": 900})
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("dialog", self._dialog)
        self.url = path.as_uri()
        page.goto(self.url, wait_until="load")
        self.violations = page.evaluate("window.__violations")

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def assert_clean(self) -> None:
        assert self.errors == []
        assert self.violations == []
        assert self.dialogs == []
        assert [u for u in self.requests if u != self.url and not u.startswith("data:")] == []

    def screenshot(self, path: Path) -> bytes:
        data = self.page.screenshot(path=str(path), full_page=True)
        keep = os.environ.get("GRADCLI_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)
        return data


def _write(tmp_path: Path, name: str, records: list[dict]) -> Path:
    path = tmp_path / f"{name}.html"
    path.write_bytes(render(records))
    return path


def _column(page, header: str) -> list[float]:
    return page.evaluate(
        """(header) => {
          const table = document.querySelector("table.sortable");
          const col = Array.from(table.tHead.rows[0].cells).findIndex(
            (th) => th.textContent.trim() === header);
          return Array.from(table.tBodies[0].rows, (r) => Number(r.cells[col].dataset.v));
        }""",
        header,
    )


def test_report_loads_sorts_and_shows_its_pictures(browser, cli, models, tmp_path):
    """Pages `--html` wrote: saliency pictures that decode; a per-sample weights table that
    sorts by a click; and the same page with a script and an image the policy does not admit
    put into it, which are refused (seen as violations: the check above can fail)."""
    page_file = tmp_path / "wrt-input.html"
    result = cli(
        "wrt-input", models["cnn"], models["dir"] / "img.npy", "--class", "pred",
        "--png", tmp_path / "pictures", "--html", page_file,
    )  # fmt: skip
    assert result.code == 0, result.err
    opened = Opened(browser, page_file)
    opened.assert_clean()
    page = opened.page
    sizes = page.evaluate(
        "Promise.all(Array.from(document.images, (i) => i.decode().then("
        "() => [i.naturalWidth, i.naturalHeight])))"
    )
    assert len(sizes) == len(list((tmp_path / "pictures").iterdir())) == 5
    assert all(w > 0 and h > 0 for w, h in sizes)
    png = opened.screenshot(tmp_path / "wrt-input.png")
    assert len(png) > 10_000

    # a table with several rows to sort: per-sample weight gradients, every kind of column
    import json

    page_file = tmp_path / "wrt-weights.html"
    result = cli(
        "wrt-weights", models["seqni"], models["dir"] / "x5.npy", "--target",
        models["dir"] / "labels4.npy", "--per-sample", "--max-norm", "0.3", "--json",
        "--html", page_file,
    )  # fmt: skip
    records = [json.loads(line) for line in result.out.splitlines()]
    opened = Opened(browser, page_file)
    opened.assert_clean()
    page = opened.page
    tensors = records[0]["tensors"]
    rows = page.locator("table.sortable").first.locator("tbody tr")
    assert rows.count() == len(tensors) == 6
    assert page.locator("table.sortable").first.locator("tbody tr.tripped").count() == sum(
        t["tripped"] for t in tensors
    )
    assert _column(page, "L2") == [t["l2"] for t in tensors]
    header = page.locator("table.sortable").first.locator("th button", has_text="L2")
    header.click()
    assert _column(page, "L2") == sorted(t["l2"] for t in tensors)
    header.click()
    assert _column(page, "L2") == sorted((t["l2"] for t in tensors), reverse=True)
    names = page.locator("table.sortable").first.locator("tbody tr td:nth-child(2)")
    by_l2 = sorted(tensors, key=lambda t: -t["l2"])
    assert names.all_inner_texts() == [t["name"] for t in by_l2]
    opened.screenshot(tmp_path / "wrt-weights.png")

    tampered = page_file.read_text().replace(
        "<main>",
        '<main><script>document.title = "ran"</script><img src="http://127.0.0.1:9/x.png">',
    )
    path = tmp_path / "tampered.html"
    path.write_text(tampered)
    opened = Opened(browser, path)
    assert opened.page.title() != "ran"
    assert len(opened.violations) == 2, opened.violations
    assert any("script-src" in v for v in opened.violations)
    assert any("img-src" in v for v in opened.violations)


@pytest.fixture(scope="module")
def hostile_pages(tmp_path_factory, keras):
    root = tmp_path_factory.mktemp("hostile")
    runs = hostile_records(keras, root)
    return {name: (records, _write(root, name, records)) for name, records in runs.items()}


@pytest.mark.parametrize("run", list(HOSTILE_RUNS))
def test_hostile_names_are_text_in_the_page(hostile_pages, run):
    """Every hostile name is on the page as escaped text (control characters as escapes),
    never as markup: the parsed page has only the page's own elements and attributes."""
    records, path = hostile_pages[run]
    data = path.read_bytes()
    page = Page(data)
    text = data.decode()
    for name in HOSTILE_RUNS[run]:
        assert html(name) in text
        assert printable(name) in "".join(page.text)
        assert name not in text  # raw: never
    own = {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h4", "p"}
    own |= {"span", "main", "footer", "script", "dl", "dt", "dd", "code", "details", "summary"}
    own |= {"div", "table", "thead", "tbody", "tr", "th", "td", "button", "figure", "img", "a"}
    own |= {"figcaption", "section", "ul", "li", "svg", "g", "text", "rect", "line", "path"}
    own |= {"circle", "polyline"}
    assert {tag for tag, _ in page.tags} <= own
    assert not [attrs for _, attrs in page.tags if any(k.startswith("on") for k in attrs)]
    assert page.count("script") == 1
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    if run == "directory":  # the broken model is a row of its own, marked as an error
        errors = [r for r in page.rows[0] if "error: " in r]
        assert len(errors) == 1 and "not a .keras archive" in errors[0]


@pytest.mark.parametrize("run", list(HOSTILE_RUNS))
def test_hostile_names_render_as_text(browser, hostile_pages, run, tmp_path):
    records, path = hostile_pages[run]
    opened = Opened(browser, path)
    opened.assert_clean()  # no alert, nothing refused, nothing loaded
    page = opened.page
    shown = page.inner_text("body")
    for name in HOSTILE_RUNS[run]:
        assert printable(name) in shown.replace("\n", "")  # as text, escapes shown
    found = page.evaluate(
        """() => ({
          scripts: document.scripts.length,
          images: document.images.length,
          charts: document.querySelectorAll("svg").length,
          handlers: Array.from(document.querySelectorAll("*")).flatMap(
            (e) => Array.from(e.attributes, (a) => a.name)).filter((n) => n.startsWith("on")),
          injected: document.querySelectorAll("b, iframe, svg svg, title img").length,
        })"""
    )
    pictures = sum(len(r["png"]) for r in records if isinstance(r.get("png"), list))
    charts = sum(1 for r in records if r.get("layer_summary"))  # a flow chart each
    charts += len(records) > 1 and trajectory(records) is not None
    charts += sum(1 for r in records if r.get("command") == "diff")  # its figures
    assert found == {
        "scripts": 1,
        "images": pictures,
        "charts": charts,
        "handlers": [],
        "injected": 0,
    }
    png = opened.screenshot(tmp_path / f"hostile-{run}.png")
    assert len(png) > 1000

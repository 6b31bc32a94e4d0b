"""The documentation site: it builds strictly (notebooks run, links and references checked), every public
name has a page with a docstring, and a real browser (headless Chromium) finds it working: pages load
without console errors, search finds the API, notebook pages show their plots and tables, code blocks
have a copy button, and it fits a phone's width.

The browser tests need the system's Chromium and its driver (no browser is downloaded). Without them they
skip, saying how to install them."""

import functools
import importlib
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs"))
import griffe_extensions  # noqa: E402
import site_browser as browser_tools  # noqa: E402
import build_hooks as hooks  # noqa: E402

needs_browser = pytest.mark.skipif(not (browser_tools.CHROMIUM and browser_tools.DRIVER),
                                   reason=f"no system Chromium: `{browser_tools.INSTALL}` installs it for the browser tests")


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.links = set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "img" and attrs.get("src"):
            self.links.append(attrs["src"])


@functools.cache
def _parsed(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _pages(site: Path) -> list[Path]:
    return [p for p in sorted(site.rglob("index.html")) if "assets" not in p.relative_to(site).parts]


def public_names() -> dict[str, object]:
    """Every public name of the packages the reference covers, by its import path (one entry per object)."""
    out, seen = {}, set()
    for package in hooks.PACKAGES:
        mod = importlib.import_module(package)
        for name in mod.__all__:
            obj = getattr(mod, name)
            key = id(obj) if not isinstance(obj, (int, str, tuple, dict)) else (package, name)
            if key not in seen:
                seen.add(key)
                out[f"{package}.{name}"] = obj
    return out


def test_every_public_name_has_a_reference_entry_with_a_docstring(site):
    entries = {}  # identifier -> the text of its docstring, as the reference shows it
    for page in (site / "reference").rglob("index.html"):
        html = page.read_text(encoding="utf-8")
        for ident, body in re.findall(r'<h\d id="(minilearn[\w.]*)" class="doc doc-heading">(.*?)(?=<h\d id="minilearn|\Z)',
                                      html, re.S):
            contents = body.split('class="doc doc-contents', 1)[-1]
            entries[ident] = " ".join(re.sub(r"<[^>]+>", "", p) for p in re.findall(r"<p>(.*?)</p>", contents, re.S))
    # A name exported by two packages (TrainCB) has its entry under one of them.
    documented = {ident.rsplit(".", 1)[1] for ident in entries}
    missing = [name for name in public_names() if name not in entries and name.rsplit(".", 1)[1] not in documented]
    assert not missing, f"public names with no entry in the API reference: {missing}"
    public = {name.rsplit(".", 1)[1] for name in public_names()}
    undocumented = [ident for ident, text in entries.items() if ident.rsplit(".", 1)[1] in public and len(text) < 20]
    assert not undocumented, f"reference entries without a docstring: {undocumented}"


def test_every_link_in_the_site_leads_to_a_page_and_anchor_that_exist(site):
    broken = []
    for page in _pages(site):
        for link in _parsed(page).links:
            url = urlparse(link)
            if url.scheme or link.startswith(("mailto:", "data:")):
                continue
            target = (page.parent / unquote(url.path)).resolve() if url.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site)} -> {link}")
            elif url.fragment and target.suffix == ".html" and unquote(url.fragment) not in _parsed(target).ids:
                broken.append(f"{page.relative_to(site)} -> {link} (no such anchor)")
    assert not broken, "\n".join(broken)


def test_the_tutorials_are_the_notebooks_with_their_outputs(site):
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        html = (site / "tutorials" / nb.stem / "index.html").read_text(encoding="utf-8")
        assert "This tutorial exercises" in html and "reference/" in html, nb.name
    quick = (site / "tutorials" / "00_quickstart" / "index.html").read_text(encoding="utf-8")
    assert "<table" in quick and "data:image/png;base64" in quick  # the progress table and the plots


def test_docstring_references_to_names_that_do_not_exist_fail_the_build(monkeypatch):
    assert hooks.check_docstring_references() == []
    from minilearn.normalized_loss import StepGradients
    monkeypatch.setattr(StepGradients, "__doc__", "See `minilearn.normalized_loss.GoneAway` and `Learner.no_such_method`.")
    import minilearn
    monkeypatch.setattr(minilearn, "__all__", [*minilearn.__all__, "StepGradients"])
    monkeypatch.setattr(minilearn, "StepGradients", StepGradients, raising=False)
    problems = hooks.check_docstring_references()
    assert len(problems) == 2 and "GoneAway" in problems[0] and "Learner.no_such_method" in problems[1]


def test_doctest_examples_become_code_blocks():
    text = "Adds.\n\n>>> 1 + 1\n2\n\nThen more.\n    >>> x = 1"
    assert griffe_extensions.fence_examples(text) == (
        "Adds.\n\n```pycon\n>>> 1 + 1\n2\n```\n\nThen more.\n    ```pycon\n    >>> x = 1\n    ```")


# ---- in a real browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(site):
    with browser_tools.served(site) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    driver = browser_tools.chrome()
    yield driver
    driver.quit()


def _console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


@needs_browser
def test_every_page_loads_without_a_console_error(site, served, browser):
    failures = {}
    for page in _pages(site):
        path = page.parent.relative_to(site).as_posix()
        browser.get(served + (path + "/" if path != "." else ""))
        assert browser.find_element("css selector", "article").text.strip(), path
        if errors := _console_errors(browser):
            failures[path] = errors
    assert not failures, failures


@needs_browser
@pytest.mark.parametrize("query, page", [("AccelerateCustomCB", "reference/callbacks/"),
                                         ("forward_backward_custom", "reference/minilearn/")])
def test_search_finds_the_api_and_its_first_hit_opens_the_right_page(served, browser, query, page):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(served)
    box = WebDriverWait(browser, 10).until(EC.element_to_be_clickable(("css selector", "input.md-search__input")))
    box.click()
    box.send_keys(query)
    # The results are drawn again for each letter typed: wait until the first hit stays the same for a second.
    first_hit = "return (document.querySelector('.md-search-result__item a') || {}).href || null;"
    seen = []
    WebDriverWait(browser, 30, poll_frequency=0.5).until(
        lambda d: seen.append(d.execute_script(first_hit)) or (len(seen) > 2 and seen[-1] is not None and
                                                              seen[-1] == seen[-2] == seen[-3]))
    for _ in range(5):
        try:
            browser.find_element("css selector", ".md-search-result__item a").click()
            break
        except StaleElementReferenceException:
            pass
    WebDriverWait(browser, 10).until(lambda d: page in d.current_url)
    assert query in browser.find_element("css selector", "article").text


@needs_browser
def test_a_notebook_page_shows_its_plots_and_progress_tables(served, browser):
    browser.get(served + "tutorials/00_quickstart/")
    images = browser.find_elements("css selector", "article img")
    assert images, "no images on the quickstart tutorial"
    loaded = browser.execute_script(
        "return Array.from(document.querySelectorAll('article img')).map(i => i.complete && i.naturalWidth > 0);")
    assert all(loaded), loaded
    assert all(img.size["width"] > 0 for img in images if img.is_displayed())
    tables = browser.find_elements("css selector", "article table")
    assert any("epoch" in t.text and "loss" in t.text for t in tables), "no progress table on the quickstart tutorial"


@needs_browser
def test_code_blocks_have_a_copy_button(served, browser):
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(served)  # a page of the site: the theme's script adds a button to each block once loaded
    blocks = browser.find_elements("css selector", "article pre > code")
    assert blocks
    WebDriverWait(browser, 10).until(
        lambda d: len(d.find_elements("css selector", "article pre button[data-clipboard-target]")) == len(blocks))
    browser.get(served + "tutorials/00_quickstart/")  # a notebook: each code cell has its own
    cells = browser.find_elements("css selector", "article .jp-CodeCell .highlight-ipynb")
    assert cells and len(browser.find_elements("css selector", "article .jp-CodeCell clipboard-copy")) == len(cells)


@needs_browser
def test_the_site_works_at_a_phone_s_width(served):
    phone = browser_tools.chrome(390, 844)
    try:
        for path in ("", "reference/callbacks/", "tutorials/00_quickstart/"):
            phone.get(served + path)
            menu = phone.find_element("css selector", "label.md-header__button[for='__drawer']")
            assert menu.is_displayed(), path  # the navigation folds into the drawer
            overflow = phone.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
            assert overflow <= 1, f"{path or 'Get started'} is {overflow} px wider than a phone's screen"
    finally:
        phone.quit()

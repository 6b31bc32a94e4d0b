"""The built site in a real browser: served on 127.0.0.1, opened in the system's headless Chromium.

Used by the browser tests (tests/integration/test_docs_site.py) and, run as a script, to take the
screenshots a person looks at:

    python -m mkdocs build && python docs/site_browser.py     # writes docs/screenshots/*.png from site/
"""

import contextlib
import functools
import http.server
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
INSTALL = "apt-get install -y chromium chromium-driver"
# name: (page, what to scroll to first or None)
SCREENSHOTS = {"get-started": ("", None), "tutorial": ("tutorials/00_quickstart/", None),
               "tutorial-outputs": ("tutorials/00_quickstart/", "article .jp-OutputArea table"),
               "api": ("reference/callbacks/", None)}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def served(site: Path) -> Iterator[str]:
    """Serve the folder `site` on 127.0.0.1 for the `with` block; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()


def chrome(width: int = 1280, height: int = 900):
    """A headless Chromium of the given window size, its console messages kept (`driver.get_log("browser")`).
    It uses the system's browser and driver, downloading nothing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    if not (CHROMIUM and DRIVER):
        raise RuntimeError(f"no system Chromium and chromedriver: install them with `{INSTALL}`")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def loaded(driver, timeout: float = 20) -> None:
    """Wait until the page in `driver` has loaded, its article drawn and its images decoded."""
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
        "const a = document.querySelector('article');"
        "return document.readyState === 'complete' && a !== null && a.getBoundingClientRect().height > 0"
        " && a.innerText.trim().length > 0 && Array.from(document.images).every(i => i.complete);"))


def screenshots(site: Path, out: Path) -> list[Path]:
    """Screenshots (1280 x 900) of Get started, a tutorial (its top and its first table) and an API page into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    driver, written = chrome(), []
    try:
        with served(site) as url:
            for name, (path, scroll_to) in SCREENSHOTS.items():
                driver.get(url + path)
                loaded(driver)
                if scroll_to:
                    driver.execute_script("document.querySelector(arguments[0]).scrollIntoView({block: 'center'});", scroll_to)
                    time.sleep(1)  # the header's title changes with a fade as the page scrolls
                written.append(out / f"{name}.png")
                driver.save_screenshot(str(written[-1]))
    finally:
        driver.quit()
    return written


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    for path in screenshots(Path(sys.argv[1]) if len(sys.argv) > 1 else root / "site", root / "docs" / "screenshots"):
        print(path.relative_to(root))

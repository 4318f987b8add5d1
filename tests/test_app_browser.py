"""`diffkit app` in a real browser: the served page driven by headless Chromium (Debian's chromium and
chromium-driver, through Selenium; nothing is downloaded). Skips, saying why, where they are missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from diffkit.distributed import free_loopback_port
from diffkit.settings import load_settings, parse_overrides
from diffkit.training import train_run

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver")
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1600",
]
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _needs() -> str | None:
    if not Path(CHROMIUM).is_file() or CHROMEDRIVER is None:
        return "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    for module, extra in (("selenium", "dev"), ("gradio", "app")):
        try:
            __import__(module)
        except ImportError:
            return f"needs {module} (pip install -e '.[{extra}]')"
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`diffkit app` on a tiny run, on a free loopback port; stopped at the end."""
    reason = _needs()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("app-browser")
    run = root / "tiny"
    overrides = ["data.limit=64", "train.batch_size=8", "train.max_steps=7", "train.threads=1", "sample.steps=4"]
    train_run(load_settings("tiny", parse_overrides(overrides)), run)
    port = free_loopback_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False"}
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffkit", "app", "--run", str(run), "--host", "127.0.0.1", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"diffkit app exited with {proc.returncode}: {(root / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"diffkit app did not answer within 120 s: {(root / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="diffkit-chromium-")
    for flag in [*CHROME_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # an explicit driver: no downloads
    driver.set_page_load_timeout(60)
    try:
        driver.get(server)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shown_image(driver: Any, elem_id: str) -> dict[str, Any] | None:
    """The image inside #elem_id once loaded: its natural size and the spread of its pixel values."""
    return driver.execute_script(
        """
        const img = document.querySelector(`#${arguments[0]} img`);
        if (!img || !img.complete || img.naturalWidth === 0) return null;
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
        const d = ctx.getImageData(0, 0, c.width, c.height).data;
        let lo = 255, hi = 0;
        for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
        return {width: img.naturalWidth, height: img.naturalHeight, lo: lo, hi: hi, src: img.src};
        """,
        elem_id,
    )


def wait_for(driver: Any, condition: Any, seconds: float = 180) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.5).until(lambda d: condition(d))


def open_tab(driver: Any, name: str) -> None:
    from selenium.webdriver.common.by import By

    def find(d: Any) -> Any:
        return next((b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == name), None)

    tab = wait_for(driver, find)
    tab.click()


def click(driver: Any, elem_id: str) -> None:
    from selenium.webdriver.common.by import By

    wait_for(driver, lambda d: d.find_elements(By.ID, elem_id))[0].click()


def test_sample_then_watch_in_chromium(browser: Any, server: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    start = time.monotonic()
    download = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#sample-download"))[0]
    assert not download.is_enabled() or download.get_attribute("disabled") is not None  # nothing to download yet
    click(browser, "sample-run")
    grid = wait_for(browser, lambda d: shown_image(d, "sample-grid"))
    assert (grid["width"], grid["height"]) == ((4 * 30 + 2) * 2, (4 * 30 + 2) * 2)  # 4 classes x 4 images, scale 2
    assert grid["hi"] - grid["lo"] > 50, grid  # not blank
    assert grid["src"].startswith(server)
    shown = browser.execute_script("return document.querySelector('#sample-grid img').getBoundingClientRect().width")
    assert shown > 2 * grid["width"], shown  # enlarged to fill its box, not a thumbnail
    browser.save_screenshot(str(tmp_path / "sample.png"))

    open_tab(browser, "Watch it denoise")
    click(browser, "watch-run")
    frame = wait_for(browser, lambda d: shown_image(d, "watch-frame"))
    assert (frame["width"], frame["height"]) == ((2 * 30 + 2) * 8, (30 + 2) * 8)  # x_t | x̂0, enlarged 8 times
    assert frame["hi"] - frame["lo"] > 50, frame
    browser.save_screenshot(str(tmp_path / "watch.png"))

    # bad input is a message in the page, and the server goes on serving
    open_tab(browser, "Inpaint")
    wait_for(browser, lambda d: "loaded synthetic:train:0" in d.page_source)
    checked = [e.get_attribute("value") for e in browser.find_elements(By.CSS_SELECTOR, "input[type=radio]:checked")]
    assert "center" in checked, checked  # loading a digit leaves the mask choice alone
    next(e for e in browser.find_elements(By.CSS_SELECTOR, "label") if e.text == "drawn in the editor").click()
    click(browser, "inpaint-run")
    error = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".dk-error"))[0]
    assert "nothing is drawn yet" in error.text and "Traceback" not in browser.page_source
    browser.save_screenshot(str(tmp_path / "inpaint-error.png"))
    open_tab(browser, "Sample")
    assert shown_image(browser, "sample-grid") is not None
    for tab in ("Interpolate", "The run"):
        open_tab(browser, tab)
        time.sleep(1)
        browser.save_screenshot(str(tmp_path / f"{tab.split()[-1].lower()}.png"))

    # offline: everything the page loaded came from the app itself
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(name.startswith(server) for name in loaded), [n for n in loaded if not n.startswith(server)]
    print(f"browser test: {time.monotonic() - start:.1f}s; screenshots in {tmp_path}")

"""The web page in a real headless Chromium: type a prompt, watch the tokens arrive."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
webdriver = pytest.importorskip("selenium.webdriver",
                                reason="selenium is not installed (pip install selenium)")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from rnnlab.serve.app import create_app  # noqa: E402
from rnnlab.serve.registry import Registry  # noqa: E402
from serve_runs import lm_run  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="chromium and chromedriver are not installed "
                              "(apt-get install chromium chromium-driver)"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def test_the_playground_streams_a_sample_into_the_page(tmp_path: Path) -> None:
    registry = Registry.load([lm_run(tmp_path / "char", level="char")])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(registry), host="127.0.0.1", port=port,
                                           log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                 "--window-size=1200,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
    try:
        browser.set_page_load_timeout(60)
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_element(By.ID, "model").get_attribute("value") == "char")
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("abc")
        length = browser.find_element(By.ID, "max_tokens")
        length.clear()
        length.send_keys("40")
        browser.find_element(By.ID, "seed").send_keys("3")
        browser.find_element(By.ID, "generate").click()
        sample = browser.find_element(By.ID, "sample")
        wait.until(lambda b: sample.get_attribute("data-tokens") == "40")
        wait.until(lambda b: "40 tokens" in b.find_element(By.ID, "sample-status").text)
        assert sample.text.startswith("abc") and len(sample.text) > len("abc")
        browser.find_element(By.ID, "score-text").clear()
        browser.find_element(By.ID, "score-text").send_keys("abc cab")
        browser.find_element(By.ID, "score").click()
        wait.until(lambda b: "perplexity" in b.find_element(By.ID, "score-status").text)
        spans = browser.find_elements(By.CSS_SELECTOR, "#scored span")
        assert spans and "bits" in spans[0].get_attribute("title")
        browser.find_element(By.ID, "activate").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#act-rows .act"))
        browser.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 0
    finally:
        browser.quit()
        server.should_exit = True
        thread.join(timeout=30)
        registry.close()

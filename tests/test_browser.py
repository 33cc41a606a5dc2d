"""The page of `amr serve` in a real browser: headless Chromium (Debian's
chromium and chromium-driver, driven by selenium) over a live server of a
real zero-shot index of the sounds set (tests/test_serve.py's `real_api`).

It types queries, checks the expected result comes first and that its audio
element loads the real file and sits at the segment's start, finds similar
sounds, pages, queries by a chosen file, and saves a screenshot of the page:
to $AMR_SCREENSHOT when set (the README's docs/serve.png), else beside the
test's temporary files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import soundfile as sf
from test_serve import real_api, real_index  # noqa: F401  (fixtures)

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# As root in a container: no sandbox, no GPU; and nothing that reaches the network by itself.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--window-size=1280,1100",
]
WAIT = 120  # seconds for any one thing to appear: a busy two-core machine, the audio model loading on the first upload


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        message = f"{CHROMIUM} or {CHROMEDRIVER} missing: apt-get install -y chromium chromium-driver (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="amr-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_until(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(condition, message=f"timed out waiting for {what}")


def wait_for_results(driver) -> list:
    wait_until(driver, lambda d: d.execute_script("return document.body.dataset.state") in ("ready", "error"), "results")
    assert driver.execute_script("return document.body.dataset.state") == "ready", driver.find_element("id", "status").text
    return driver.find_elements("css selector", "#results > li.result")


def search(driver, text: str) -> list:
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element("id", "query")
    box.clear()
    driver.execute_script("document.body.dataset.state = 'typing'")
    box.send_keys(text, Keys.ENTER)
    return wait_for_results(driver)


def audio_state(driver, result) -> dict:
    """The result's <audio> once it has loaded the file's metadata (readyState >= HAVE_METADATA)."""
    audio = result.find_element("css selector", "audio")
    wait_until(driver, lambda d: d.execute_script("return arguments[0].readyState", audio) >= 1, "the audio to load")
    script = "const a = arguments[0]; return {duration: a.duration, time: a.currentTime, error: a.error?.code ?? null, src: a.currentSrc}"
    return driver.execute_script(script, audio)


DROP = """
const [url, name, zone, done] = arguments;
fetch(url).then((response) => response.blob()).then((blob) => {
  const data = new DataTransfer();
  data.items.add(new File([blob], name, {type: blob.type}));
  zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
  done();
});
"""


def clock(seconds: float) -> str:
    """m:ss.s, as the page shows a time."""
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def test_the_page_searches_plays_pages_and_queries_by_a_file(browser, real_api: str, shared: Path, tmp_path: Path) -> None:  # noqa: F811
    browser.get(real_api + "/")
    wait_until(browser, lambda d: "39 sounds" in d.find_element("id", "index-info").text, "the index summary")
    assert browser.find_element("css selector", "label[for=query]").text == "Describe a sound"

    # a long recording, found by its second segment: the player starts there
    second = requests.get(f"{real_api}/api/item", params={"id": "freesound-train"}, timeout=60).json()["segments"][1]
    results = search(browser, "a train")
    first = results[0]
    assert first.get_attribute("data-id") == "freesound-train"
    assert first.find_element("css selector", ".segment").text == f"{clock(second['start'])}–{clock(second['end'])}"
    audio = audio_state(browser, first)
    duration = sf.info(shared / "data" / "sounds" / "audio" / "freesound-train.wav").duration
    assert audio["error"] is None and audio["duration"] == pytest.approx(duration, abs=0.05)  # the real file, decoded
    assert audio["time"] == pytest.approx(second["start"], abs=1e-3) and second["start"] > 8

    results = search(browser, "dog barking")
    assert len(results) == 10 and results[0].get_attribute("data-id") == "bigsoundbank-dog"
    dog = results[0]
    assert dog.find_element("css selector", ".title").text == "2 dogs barking"
    assert "metadata" in dog.find_element("css selector", ".split").text and "Dog" in dog.find_element("css selector", ".tags").text
    audio = audio_state(browser, dog)
    assert audio["error"] is None and audio["duration"] > 5 and audio["time"] == 0
    assert "/api/audio?id=bigsoundbank-dog" in audio["src"]
    assert browser.find_element("id", "status").text == "Results 1–10 of 39 for “dog barking”"
    screenshot = Path(os.environ.get("AMR_SCREENSHOT") or tmp_path / "serve.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000

    browser.find_element("id", "next").click()
    results = wait_for_results(browser)
    assert browser.find_element("id", "status").text == "Results 11–20 of 39 for “dog barking”"
    assert [r.find_element("css selector", ".rank").text for r in results] == [str(n) for n in range(11, 21)]

    results = search(browser, "dog barking")
    browser.execute_script("document.body.dataset.state = 'clicked'")
    results[0].find_element("css selector", "button.similar").click()
    results = wait_for_results(browser)
    assert browser.find_element("id", "status").text.endswith("for “sounds like bigsoundbank-dog”")
    assert "bigsoundbank-dog" not in [r.get_attribute("data-id") for r in results]
    assert "audio cosine" in results[0].find_element("css selector", ".split").text

    clip = shared / "data" / "sounds" / "audio" / "esc50-2-104105-A-19.wav"
    browser.execute_script("document.body.dataset.state = 'choosing'")
    browser.find_element("id", "example").send_keys(str(clip))
    results = wait_for_results(browser)
    assert results[0].get_attribute("data-id") == "esc50-2-104105-A-19"
    assert browser.find_element("id", "status").text.endswith(f"for “{clip.name}”")

    # a file dropped on the drop zone (a DataTransfer built in the page, as a drag from the desktop would carry it)
    browser.execute_script("document.body.dataset.state = 'dropping'")
    browser.execute_async_script(DROP, "/api/audio?id=freesound-train", "dropped.wav", browser.find_element("id", "drop"))
    results = wait_for_results(browser)
    assert results[0].get_attribute("data-id") == "freesound-train"  # its whole-clip vector is its second segment's
    assert browser.find_element("id", "status").text.endswith("for “dropped.wav”")

    browser.execute_script("document.body.dataset.state = 'typing'")
    box = browser.find_element("id", "query")
    box.clear()
    box.send_keys("?!\n")
    wait_until(browser, lambda d: d.execute_script("return document.body.dataset.state") == "error", "the error")
    assert browser.find_element("id", "status").text == "the query has no words"

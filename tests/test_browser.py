"""The page of `amr serve` in a real browser: headless Chromium (Debian's
chromium and chromium-driver, driven by selenium) over a live server of a
real zero-shot index of the sounds set (the `real_api` fixture of tests/conftest.py).

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


def test_the_page_searches_plays_pages_and_queries_by_a_file(browser, real_api: str, shared: Path, tmp_path: Path) -> None:
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


# ---------------------------------------------------------------- the page as a librarian's work tool


DRAG = """
const [node] = arguments;
const data = new DataTransfer();
node.dispatchEvent(new DragEvent("dragstart", {dataTransfer: data, bubbles: true, cancelable: true}));
return {download: data.getData("DownloadURL"), uri: data.getData("text/uri-list"), text: data.getData("text/plain")};
"""


def result_ids(driver) -> list[str]:
    return [r.get_attribute("data-id") for r in wait_for_results(driver)]


def test_filters_waveforms_keys_drag_and_ucs_categories(browser, library_api: str, library_index: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    # a search from its URL: the query and a filter, shown in the form
    browser.get(f"{library_api}/?q=an+animal+calling&folder=Animals")
    ids = result_ids(browser)
    assert set(ids) == {
        "Animals/ANMLDog_Two Dogs Barking_BSB_FARM.mp3",
        "Animals/ANMLCat_Meowing Cat_BSB_FARM.mp3",
        "Animals/Birds/rooster at dawn.mp3",
    }
    assert browser.find_element("id", "query").get_attribute("value") == "an animal calling"
    assert Select(browser.find_element("id", "folder")).first_selected_option.get_attribute("value") == "Animals"

    # a second filter narrows the results and is written into the URL
    browser.execute_script("document.body.dataset.state = 'filtering'")
    Select(browser.find_element("id", "category")).select_by_value("ANIMALS")
    ids = result_ids(browser)
    assert set(ids) == {"Animals/ANMLDog_Two Dogs Barking_BSB_FARM.mp3", "Animals/ANMLCat_Meowing Cat_BSB_FARM.mp3"}
    assert "cat=ANIMALS" in browser.current_url and "folder=Animals" in browser.current_url and "q=an+animal+calling" in browser.current_url

    # UCS categories: the name's, or the suggested one
    results = wait_for_results(browser)
    dog = results[ids.index("Animals/ANMLDog_Two Dogs Barking_BSB_FARM.mp3")]
    assert dog.find_element("css selector", ".ucs").text == "UCS ANMLDog · ANIMALS-DOG"
    browser.execute_script("document.body.dataset.state = 'filtering'")
    Select(browser.find_element("id", "category")).select_by_value("")
    Select(browser.find_element("id", "folder")).select_by_value("Transport")
    (train,) = wait_for_results(browser)
    assert train.find_element("css selector", ".ucs").text.startswith("Suggested UCS TRN")

    # the waveform: drawn from the overview, the matching segment marked, a click seeks there
    wave = train.find_element("css selector", ".wave")
    wait_until(browser, lambda d: wave.get_attribute("data-ready") == "true", "the waveform")
    duration = float(wave.get_attribute("data-duration"))
    assert duration == pytest.approx(17.39, abs=0.01)
    inked = browser.execute_script(
        "const c = arguments[0].querySelector('canvas'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n / (d.length / 4);",
        wave,
    )
    assert 0.05 < inked < 0.95  # a waveform, not a blank or filled box
    mark = train.find_element("css selector", ".segment-mark")
    end = float(
        requests.get(f"{library_api}/api/browse", params={"folder": "Transport", "q": "an animal calling"}, timeout=60).json()["results"][
            0
        ]["end"]
    )
    assert mark.value_of_css_property("width") != "0px" and mark.get_attribute("style").find("width") >= 0
    assert float(mark.get_attribute("style").split("width:")[1].split("%")[0]) == pytest.approx(100 * end / duration, abs=0.01)
    width = wave.size["width"]
    ActionChains(browser).move_to_element_with_offset(wave, width // 4 - width // 2 + 1, 0).click().perform()  # a quarter of the way in
    audio = train.find_element("css selector", "audio")
    wait_until(browser, lambda d: d.execute_script("return arguments[0].currentTime", audio) > 1, "the seek")
    assert browser.execute_script("return arguments[0].currentTime", audio) == pytest.approx(duration / 4, abs=0.5)
    browser.execute_script("arguments[0].pause()", audio)

    # keyboard: next / previous result, space plays and stops
    browser.execute_script("document.body.dataset.state = 'filtering'")
    Select(browser.find_element("id", "folder")).select_by_value("")
    results = wait_for_results(browser)
    browser.execute_script("document.activeElement.blur()")

    def press(key: str) -> None:
        ActionChains(browser).send_keys(key).perform()

    press("j")
    press("j")
    selected = browser.find_elements("css selector", "#results > li.selected")
    assert [s.get_attribute("data-id") for s in selected] == [results[1].get_attribute("data-id")]
    press("k")
    selected = browser.find_element("css selector", "#results > li.selected")
    assert selected.get_attribute("data-id") == results[0].get_attribute("data-id")
    first_audio = results[0].find_element("css selector", "audio")
    press(" ")
    wait_until(browser, lambda d: not d.execute_script("return arguments[0].paused", first_audio), "playing")
    press(" ")
    wait_until(browser, lambda d: d.execute_script("return arguments[0].paused", first_audio), "stopped")

    # drag out: the drag carries the file's URL (DownloadURL, Chromium's file drag), and the URL serves the file
    dog = next(r for r in results if r.get_attribute("data-id") == "Animals/ANMLDog_Two Dogs Barking_BSB_FARM.mp3")
    assert dog.get_attribute("draggable") == "true"
    dragged = browser.execute_script(DRAG, dog)
    kind, name, url = dragged["download"].split(":", 2)
    path = library_index.parent / "lib" / "Animals" / "ANMLDog_Two Dogs Barking_BSB_FARM.mp3"
    assert (kind, name, dragged["text"]) == ("audio/mpeg", path.name, str(path)) and url == dragged["uri"]
    assert requests.get(url, timeout=60).content == path.read_bytes()
    download = dog.find_element("css selector", "a.download")
    assert (
        download.get_attribute("download") == path.name
        and requests.get(download.get_attribute("href"), timeout=60).content == path.read_bytes()
    )

    # copy path: the path is what the clipboard holds
    browser.execute_cdp_cmd(
        "Browser.grantPermissions", {"origin": library_api, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]}
    )
    dog.find_element("css selector", "button.copy-path").click()
    wait_until(browser, lambda d: dog.find_element("css selector", "button.copy-path").text == "Copied", "the copy")
    assert browser.execute_async_script("navigator.clipboard.readText().then(arguments[0], (e) => arguments[0]('failed: ' + e))") == str(
        path
    )

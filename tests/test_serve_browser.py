"""The server's page in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`, through
Selenium) submits two prompts of different shapes to the shipped default model, follows their progress bars,
and checks that each finished `<video>` has the asked-for size and duration and plays. It saves a screenshot
to docs/server.png for the README while a third video, of odd height and width (written as yuv444p H.264,
since 4:2:0 needs even sides), is in the queue; that one must play too.

Skipped where /usr/bin/chromedriver or selenium is missing (`apt-get install chromium chromium-driver`).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = REPO / "docs" / "server.png"
REQUESTS = [  # prompt, frames, resolution HxW
    ("a red ball bouncing on a black background", 16, (128, 128)),
    ("a blue square moving to the right", 24, (96, 160)),
]
ODD = ("a green circle growing in the middle", 24, (99, 131))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    if not CHROMEDRIVER.exists() or shutil.which("chromium") is None:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,860",
                "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def until(check, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def check_videos(driver, requests) -> None:
    """Each finished video has its request's size and duration (frames / fps) and plays."""
    found = driver.execute_script(
        "return [...document.querySelectorAll('#history .video')].map(card => {"
        "  const v = card.querySelector('video');"
        "  return {prompt: card.querySelector('p').textContent, duration: v.duration,"
        "          width: v.videoWidth, height: v.videoHeight, error: v.error && v.error.code,"
        "          frames: +v.dataset.frames, fps: +v.dataset.fps};"
        "});")
    by_prompt = {v["prompt"]: v for v in found}
    assert len(by_prompt) == len(requests)
    for prompt, frames, (height, width) in requests:
        video = by_prompt[prompt]
        assert video["error"] is None and (video["height"], video["width"]) == (height, width), video
        assert video["frames"] == frames
        assert abs(video["duration"] - frames / video["fps"]) < 0.5 / video["fps"], video
    # they play: muted autoplay advances each one's clock
    clocks = ("return [...document.querySelectorAll('#history video')]"
              ".map(v => { v.play(); return v.currentTime; })")
    start = driver.execute_script(clocks)
    until(lambda: all(a != b for a, b in zip(start, driver.execute_script(clocks))), 30, "the videos to play")


def moved(driver, percent: float) -> bool:
    """Whether a progress bar in the queue is past `percent`."""
    return driver.execute_script("return [...document.querySelectorAll('#queue .bar > span')]"
                                 ".some(s => parseFloat(s.style.width) > arguments[0])", percent)


def submit(driver, prompt: str, frames: int, res: tuple[int, int]) -> None:
    from selenium.webdriver.common.by import By

    for field, value in (("prompt", prompt), ("frames", str(frames)), ("res", f"{res[0]}x{res[1]}")):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    driver.find_element(By.ID, "generate").click()


def test_the_page_makes_two_videos_of_different_shapes_that_play(browser, tmp_path):
    from videodit.pipeline import load_pipeline
    from videodit.serve.app import ServeConfig
    from videodit.serve.server import Server

    server = Server(load_pipeline("default"), ServeConfig(out=tmp_path / "served"))
    url = server.start()
    try:
        browser.get(f"{url}/")
        assert browser.title == "videodit"
        for prompt, frames, res in REQUESTS:
            submit(browser, prompt, frames, res)
        until(lambda: moved(browser, 0), 600, "a progress bar to move")
        until(lambda: browser.execute_script(
            "const v = document.querySelectorAll('#history video');"
            "return v.length === 2 && [...v].every(x => x.readyState >= 2);"), 900, "both videos to load")
        assert browser.execute_script("return document.getElementById('error').hidden")
        check_videos(browser, REQUESTS)
        submit(browser, *ODD)  # a queue in the screenshot
        until(lambda: moved(browser, 20), 600, "the third video's progress")
        partial = SCREENSHOT.with_name(f".{SCREENSHOT.name}.partial.png")
        assert browser.save_screenshot(str(partial))
        os.replace(partial, SCREENSHOT)
        until(lambda: browser.execute_script(
            "const v = document.querySelectorAll('#history video');"
            "return v.length === 3 && [...v].every(x => x.readyState >= 2);"), 900, "the third video to load")
        check_videos(browser, [*REQUESTS, ODD])
    finally:
        server.stop()

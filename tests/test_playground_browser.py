"""The playground (GET /) in a real browser: headless Chromium, driven by Selenium through the system
chromedriver, against the real server with the tiny SD1 bundle. A gate on the UNet decides when each step
ends, so progress and cancellation are watched step by step, without timing assumptions.

Chromium comes from Debian's packages (tests/install_browser.sh, run by the README's test command); where it
cannot be installed the tests skip and say why. SDRT_PLAYGROUND_SCREENSHOT=docs/playground.png makes the
generation test save its screenshot there.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdrt.runtime import GenerationRequest, Pipeline
from sdrt.serving.settings import Limits, ServeSettings
from serving_adapter import gated_unet, running_server

CHROMIUM = next((path for path in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if path), None)
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("no Chromium and chromedriver on this machine, and tests/install_browser.sh could not install them "
                "(it needs root and apt-get: apt-get install chromium chromium-driver)", allow_module_level=True)

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

LIMITS = Limits(max_steps=4, max_images=2, max_pixels=64 * 64)
WAIT = 60  # seconds before a wait fails (never reached when the page works)


@pytest.fixture(scope="module")
def pipe(tiny_bundle) -> Pipeline:
    return Pipeline.load(str(tiny_bundle("sd1")))


@pytest.fixture(scope="module")
def served(pipe):
    with running_server(pipe, ServeSettings(limits=LIMITS)) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, what: str):
    return WebDriverWait(driver, WAIT, poll_frequency=0.05).until(lambda d: condition(d), f"gave up waiting for {what}")


def open_page(driver, url: str, width: int = 1280, height: int = 1000) -> None:
    driver.set_window_size(width, height)
    driver.get(url + "/")
    wait(driver, lambda d: d.find_element(By.ID, "generate").is_enabled(), "the model's options to load")


def fill(driver, element_id: str, value) -> None:
    element = driver.find_element(By.ID, element_id)
    element.clear()
    element.send_keys(str(value))


def percents(driver) -> list[str]:
    return [bar.get_attribute("data-percent") for bar in driver.find_elements(By.CSS_SELECTOR, "#progress progress")]


def png_at(driver, url: str) -> Image.Image:
    """The bytes behind a blob: URL of the page, as the browser would save them."""
    b64 = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0]).then(r => r.arrayBuffer()).then(buf => {
          let s = ""; for (const b of new Uint8Array(buf)) s += String.fromCharCode(b); done(btoa(s));
        });""", url)
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    assert image.format == "PNG"
    return image


def test_generate_with_progress_to_100_then_the_images_with_their_parameters(browser, served, pipe) -> None:
    open_page(browser, served.url)
    assert "sizes 16\u2013128" in browser.find_element(By.ID, "model-info").text
    samplers = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "sampler")).options]
    assert samplers[:3] == ["ddim", "ddpm", "dpm2"] and "euler_a" in samplers  # from /v1/models
    fill(browser, "negative", "fog")
    Select(browser.find_element(By.ID, "sampler")).select_by_value("euler_a")
    Select(browser.find_element(By.ID, "schedule")).select_by_value("karras")
    for field, value in (("steps", 2), ("cfg", 6), ("temperature", 0.9), ("seed", 42), ("width", 48),
                         ("height", 32), ("batch", 2)):
        fill(browser, field, value)
    Select(browser.find_element(By.ID, "temperature-method")).select_by_value("cns")
    with gated_unet(pipe) as gate:
        gate.holding = True
        fill(browser, "prompt", "a red lighthouse")
        browser.find_element(By.ID, "prompt").send_keys(Keys.CONTROL, Keys.ENTER)  # the keyboard way to generate
        assert gate.entered.acquire(timeout=WAIT)  # step 1's UNet call (both images, one batch)
        wait(browser, lambda d: percents(d) == ["0", "0"], "two progress bars at 0%")
        assert browser.find_element(By.ID, "cancel").is_enabled()
        gate.allow(1)
        wait(browser, lambda d: percents(d) == ["50", "50"], "progress 50% after step 1 of 2")
        assert browser.find_element(By.CSS_SELECTOR, "label[for=progress-0]").text == "Image 1: 50% (step 1/2)"
        assert gate.entered.acquire(timeout=WAIT)
        gate.allow(1)
        wait(browser, lambda d: percents(d) == ["100", "100"], "progress 100%")
    items = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery .result") or None, "the images")
    assert len(items) == 2
    assert browser.find_element(By.ID, "progress-status").text == "Done."
    alone = pipe.generate(GenerationRequest("a red lighthouse", negative="fog", steps=2, sampler="euler_a",
                                            schedule="karras", cfg=6, temperature=0.9, temperature_method="cns",
                                            seed=42, batch=2, width=48, height=32))
    for item, seed, pixels in zip(items, (42, 43), alone.images):
        shown = item.find_element(By.CSS_SELECTOR, ".parameters").text
        assert shown.startswith("a red lighthouse\nNegative prompt: fog\nSteps: 2, Sampler: Euler a, Schedule type: "
                                f"Karras, CFG scale: 6.0, Seed: {seed}, Size: 48x32")
        assert "Temperature: 0.9, Temperature method: CNS" in shown
        link = item.find_element(By.CSS_SELECTOR, "a.download")
        assert link.get_attribute("download") == f"sdrt-{seed}.png"
        png = png_at(browser, link.get_attribute("href"))
        assert png.info["parameters"] == shown  # the download carries the chunk
        assert png.size == (48, 32)
        assert np.abs(np.asarray(png.convert("RGB"), np.int16) - pixels.astype(np.int16)).max() <= 2
        image = item.find_element(By.TAG_NAME, "img")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) == 48
        assert f"seed {seed}" in image.get_attribute("alt")
    screenshot = os.environ.get("SDRT_PLAYGROUND_SCREENSHOT")
    if screenshot:
        browser.set_window_size(1280, 1320)
        browser.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
        browser.save_screenshot(str(Path(screenshot)))

    # "Reuse last" and "send settings back to the form"
    fill(browser, "seed", -1)
    browser.find_element(By.ID, "seed-reuse").click()
    assert browser.find_element(By.ID, "seed").get_attribute("value") == "42"
    for field in ("prompt", "negative", "steps"):
        browser.find_element(By.ID, field).clear()
    Select(browser.find_element(By.ID, "sampler")).select_by_value("ddim")
    items[1].find_element(By.CSS_SELECTOR, "button.send-back").click()
    form = {field: browser.find_element(By.ID, field).get_attribute("value")
            for field in ("prompt", "negative", "sampler", "schedule", "steps", "cfg", "temperature",
                          "temperature-method", "seed", "width", "height", "batch")}
    assert form == {"prompt": "a red lighthouse", "negative": "fog", "sampler": "euler_a", "schedule": "karras",
                    "steps": "2", "cfg": "6", "temperature": "0.9", "temperature-method": "cns", "seed": "43",
                    "width": "48", "height": "32", "batch": "2"}


def test_cancel_stops_a_long_run_on_the_server(browser, served, pipe) -> None:
    open_page(browser, served.url)
    for field, value in (("steps", 4), ("width", 32), ("height", 32), ("batch", 1)):
        fill(browser, field, value)
    with gated_unet(pipe) as gate:
        gate.holding = True
        fill(browser, "prompt", "a long run")
        jobs = len(served.engine.jobs)
        browser.find_element(By.ID, "generate").click()
        assert gate.entered.acquire(timeout=WAIT)
        gate.allow(1)
        wait(browser, lambda d: percents(d) == ["25"], "progress 25% after step 1 of 4")
        browser.find_element(By.ID, "cancel").click()
        wait(browser, lambda d: d.find_element(By.ID, "progress-status").text == "Cancelled.", "the page to say so")
        job = served.engine.jobs[jobs]
        wait(browser, lambda d: job.cancelled, "the server to cancel the job")
    wait(browser, lambda d: d.find_element(By.ID, "generate").is_enabled(), "Generate to come back")
    assert not browser.find_element(By.ID, "cancel").is_enabled()
    assert "cancelled" in browser.find_element(By.ID, "progress-0").get_attribute("class")


@pytest.mark.parametrize("width, height, message", [
    (40, 33, "height 33 is not a multiple of 8: use 32 or 40"),
    (64, 72, "size 64x72 is 4,608 pixels, more than this server's 4,096 per image: choose a smaller size"),
])
def test_an_invalid_size_shows_the_servers_one_line_error_beside_the_field(browser, served, width, height,
                                                                          message) -> None:
    open_page(browser, served.url)
    fill(browser, "prompt", "a size")
    fill(browser, "width", width)
    fill(browser, "height", height)
    browser.find_element(By.ID, "generate").click()
    error = browser.find_element(By.ID, "size-error")
    wait(browser, lambda d: error.text, "the error")
    assert error.text == message
    assert {browser.find_element(By.ID, side).get_attribute("aria-invalid") for side in ("width", "height")} == {"true"}
    assert "size-error" in browser.find_element(By.ID, "width").get_attribute("aria-describedby")
    assert browser.find_element(By.ID, "form-error").text == ""


def test_img2img_with_a_mask_drawn_on_the_canvas(browser, served, tmp_path) -> None:
    """Upload an init image, draw on the mask canvas, generate: the server gets the image and the mask."""
    rng = np.random.default_rng(1)
    source = tmp_path / "init.png"
    Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(source)
    open_page(browser, served.url)
    browser.find_element(By.CSS_SELECTOR, "#img2img summary").click()
    browser.find_element(By.ID, "init-image").send_keys(str(source))
    wait(browser, lambda d: d.find_element(By.ID, "mask-area").is_displayed(), "the mask canvas")
    assert (browser.find_element(By.ID, "width").get_attribute("value"),
            browser.find_element(By.ID, "height").get_attribute("value")) == ("48", "32")  # from the image
    canvas = browser.find_element(By.ID, "mask-canvas")
    webdriver.ActionChains(browser).move_to_element_with_offset(canvas, -20, 0).click_and_hold() \
        .move_by_offset(10, 5).release().perform()
    assert browser.find_element(By.ID, "use-mask").is_selected()  # drawing turns inpainting on
    fill(browser, "prompt", "repaint the left")
    fill(browser, "steps", 2)
    browser.find_element(By.ID, "generate").click()
    item = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery .result") or None, "the image")[0]
    shown = item.find_element(By.CSS_SELECTOR, ".parameters").text
    assert shown.startswith("repaint the left\nSteps: 2,") and "Size: 48x32" in shown
    assert "Denoising strength: 0.8" in shown
    request = served.engine.jobs[-1].request  # what the page sent, as the server read it
    assert np.array_equal(np.asarray(request.init_image.convert("RGB")), np.asarray(Image.open(source)))
    mask = np.asarray(request.mask.convert("L"))
    assert mask.shape == (32, 48) and set(np.unique(mask)) == {0, 255}  # drawn: white; elsewhere black
    assert mask[:, :24].mean() > mask[:, 24:].mean()  # drawn left of the centre


def test_readable_at_360_px_with_a_label_for_every_control(browser, served) -> None:
    open_page(browser, served.url, width=360, height=800)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 360  # no sideways scrolling
    unlabelled = browser.execute_script("""
        return [...document.querySelectorAll('input, select, textarea')]
          .filter(e => e.type !== 'hidden' && e.labels.length === 0 && !e.getAttribute('aria-label'))
          .map(e => e.id || e.outerHTML);""")
    assert unlabelled == []
    unnamed = browser.execute_script("""
        return [...document.querySelectorAll('button, a')].filter(e => !e.textContent.trim()).map(e => e.outerHTML);""")
    assert unnamed == []
    assert browser.find_element(By.ID, "generate").size["width"] <= 360


def test_a_server_with_api_keys_gets_a_key_field_kept_in_the_page_only(browser, pipe) -> None:
    with running_server(pipe, ServeSettings(limits=LIMITS, api_keys=("sesame",))) as served:
        browser.set_window_size(1280, 1000)
        browser.get(served.url + "/")  # the page itself needs no key
        key = browser.find_element(By.ID, "api-key")
        wait(browser, lambda d: key.is_displayed(), "the key field")
        assert "needs an API key" in browser.find_element(By.ID, "model-info").text
        key.send_keys("sesame", Keys.ENTER)
        wait(browser, lambda d: d.find_element(By.ID, "generate").is_enabled(), "the model to load with the key")
        for field, value in (("prompt", "keyed"), ("steps", 1), ("width", 16), ("height", 16)):
            fill(browser, field, value)
        browser.find_element(By.ID, "generate").click()
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery .result"), "the image")
        stored = browser.execute_script("return [localStorage.length, sessionStorage.length, document.cookie]")
        assert stored == [0, 0, ""]

"""trainer.serve's page in a real browser: headless Chromium from Debian's packages, driven by
Selenium, picks a photo on the page and waits for the faces' ages; a screenshot for people.

  python -m launch.browser --url=http://127.0.0.1:8080/ --photo=me.jpg --screenshot=page.png

Prints the page's status line and each face's line, then all it saw as one JSON line (the
boxes' places on the page). Used by the demo (the README's screenshot) and tests/test_serve.py.
Selenium is handed Debian's own driver (`chromium-driver`, the same version as `chromium`), so
Selenium Manager never downloads one; launch/setup.sh installs both where it can (as root, with
apt-get).
"""

import io
import json
import os

from absl import flags

from launch import entry

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1000, 900)  # CSS pixels; the page shows a photo at most 70% of the window high
SCREENSHOT_COLOURS = 256  # a palette PNG: the README's screenshot stays small


def missing():
    """Why the browser cannot run here (what to install), or None when it can."""
    absent = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if absent:
        return (f"{' and '.join(absent)} not installed: apt-get install chromium "
                f"chromium-driver (launch/setup.sh does it when run as root)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: bash launch/setup.sh"
    return None


def open_browser():
    """Headless Chromium under Selenium, with Debian's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # As root (containers, CI) Chromium refuses its sandbox; /dev/shm is often tiny there.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def show_photo(driver, url, photo, timeout=120):
    """Opens the page at `url`, picks `photo` in its file input and waits for the answer.

    Returns:
      {"status": the page's status line, "faces": each listed face's text, "boxes": each box's
      label and place [x, y, width, height] in CSS pixels from the photo's top-left corner,
      "shown_width": the photo's width on the page}.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    driver.find_element(By.ID, "photo").send_keys(os.path.abspath(photo))
    status = driver.find_element(By.ID, "status")

    def answered(_):
        done = status.text and not status.text.startswith("Looking")
        boxes = driver.find_elements(By.CSS_SELECTOR, "#stage .box")
        return done and len(boxes) == len(driver.find_elements(By.CSS_SELECTOR, "#faces li"))

    WebDriverWait(driver, timeout).until(answered)
    origin = driver.find_element(By.ID, "shown").rect
    boxes = [{"label": box.text, "place": [box.rect["x"] - origin["x"],
                                           box.rect["y"] - origin["y"],
                                           box.rect["width"], box.rect["height"]]}
             for box in driver.find_elements(By.CSS_SELECTOR, "#stage .box")]
    return {"status": status.text, "boxes": boxes, "shown_width": origin["width"],
            "faces": [item.text for item in driver.find_elements(By.CSS_SELECTOR, "#faces li")]}


def screenshot(driver, path):
    """The page as it is, as a small palette PNG at `path`."""
    from PIL import Image

    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    image.quantize(SCREENSHOT_COLOURS).save(path, optimize=True)


flags.DEFINE_string("url", "http://127.0.0.1:8080/", "The page of a running trainer.serve.")
flags.DEFINE_string("photo", None, "The photo to pick on the page.")
flags.DEFINE_string("screenshot", None, "Where to save a PNG of the page with its answer.")
flags.mark_flag_as_required("photo")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    reason = missing()
    if reason:
        raise entry.UserError(reason)
    driver = open_browser()
    try:
        shown = show_photo(driver, FLAGS.url, FLAGS.photo)
        if FLAGS.screenshot:
            screenshot(driver, FLAGS.screenshot)
    finally:
        driver.quit()
    print(shown["status"])
    for number, text in enumerate(shown["faces"], 1):
        print(f"face {number}: {text.replace(chr(10), '; ')}")
    if FLAGS.screenshot:
        print(f"screenshot: {FLAGS.screenshot}")
    print(json.dumps(shown), flush=True)
    return 0


if __name__ == "__main__":
    entry.run(main)

"""The real desktop window end to end: the sepchat-desktop binary under Xvfb, driven over WebDriver through
tauri-driver and WebKitGTK's WebKitWebDriver, with a keep-alive client (selenium). A message is sent, the reply must
stream in while the KV panel's `kv-tokens-seen` grows, and a screenshot of the window with the reply and the panel is
saved and checked not to be blank.

Run by `make test` (under `xvfb-run`); arguments: the desktop binary and the screenshot path. Needs the default model
(fetched by `make test`) and a display. Exits non-zero with a message on any failure; never skips.
"""

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.common.options import ArgOptions

REPLY_TIMEOUT = 180.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tauri-driver exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"tauri-driver did not listen on port {port} within {timeout:.0f} s")


def wait_until(what: str, probe, timeout: float = 60.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def by_test_id(driver, test_id: str):
    return driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{test_id}"]')


def plain_integer(driver, test_id: str) -> int | None:
    elements = by_test_id(driver, test_id)
    if not elements:
        return None
    text = elements[0].text.strip()
    if not text.isdigit():
        raise AssertionError(f"{test_id} shows {text!r}, not a plain integer")
    return int(text)


def check_not_blank(png: bytes) -> None:
    """A painted window has many colours spread over it; a blank or black one has one or two."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    width, height = image.size
    assert width >= 640 and height >= 400, f"the screenshot is {width}x{height}"
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50, f"the screenshot has only {len(colours)} colours: blank?"
    most_common_share = max(count for count, _ in colours) / (width * height)
    assert most_common_share < 0.95, f"{most_common_share:.0%} of the screenshot is one colour: blank?"


def run(binary: str, screenshot: str) -> None:
    driver_binary = shutil.which("tauri-driver") or os.path.expanduser("~/.cargo/bin/tauri-driver")
    native_driver = shutil.which("WebKitWebDriver")
    if not os.path.exists(driver_binary) or native_driver is None:
        raise RuntimeError("tauri-driver or WebKitWebDriver is missing: run `make test` (it installs them)")
    if not os.environ.get("DISPLAY"):
        raise RuntimeError("no DISPLAY: run this under xvfb-run (as `make test` does)")

    data_dir = tempfile.mkdtemp(prefix="sepchat-desktop-e2e-")
    port = free_port()
    env = dict(os.environ, SEPCHAT_DATA_DIR=data_dir)
    tauri_driver = subprocess.Popen(
        [driver_binary, "--port", str(port), "--native-port", str(free_port()), "--native-driver", native_driver],
        env=env,
    )
    driver = None
    try:
        wait_for_port(port, tauri_driver, timeout=30)
        options = ArgOptions()
        options.set_capability("browserName", "wry")
        options.set_capability("tauri:options", {"application": binary})
        # selenium's remote connection keeps its HTTP connection alive between commands.
        driver = webdriver.Remote(command_executor=f"http://127.0.0.1:{port}", options=options)

        composer = wait_until("the composer", lambda: by_test_id(driver, "composer"), timeout=60)[0]
        # The window loads the default model in the background after it opens.
        wait_until(
            "the default model to load",
            lambda: driver.find_elements(By.CSS_SELECTOR, '.app[data-model="loaded"]'),
            timeout=60,
        )
        wait_until("the KV panel", lambda: by_test_id(driver, "kv-panel"), timeout=10)
        composer.send_keys("Tell me a short story about a lighthouse keeper and her cat.")
        composer.send_keys(Keys.ENTER)

        wait_until("the reply to start", lambda: by_test_id(driver, "stop"), timeout=REPLY_TIMEOUT)
        lengths, tokens_seen = [], []
        while by_test_id(driver, "stop"):
            replies = by_test_id(driver, "message-assistant")
            try:
                lengths.append(len(replies[-1].text.strip()) if replies else 0)
                seen = plain_integer(driver, "kv-tokens-seen")
            except WebDriverException:
                # The element was re-rendered between finding and reading it.
                continue
            if seen is not None:
                tokens_seen.append(seen)
            time.sleep(0.1)

        steps = {length for length in lengths if length > 0}
        assert len(steps) >= 3, f"the reply appeared in {len(steps)} steps, not streamed: {lengths}"
        assert any(b > a for a, b in zip(tokens_seen, tokens_seen[1:])), f"kv-tokens-seen never grew: {tokens_seen}"
        reply = by_test_id(driver, "message-assistant")[-1]
        wait_until("the reply's final status", lambda: reply.get_attribute("data-status") == "done", timeout=30)
        assert reply.text.strip(), "the reply is empty"
        final_seen = plain_integer(driver, "kv-tokens-seen")
        assert final_seen and final_seen > 20, f"kv-tokens-seen is {final_seen} after a reply"

        time.sleep(0.5)  # the panel's last throttled redraw
        png = driver.get_screenshot_as_png()
        os.makedirs(os.path.dirname(screenshot) or ".", exist_ok=True)
        with open(screenshot, "wb") as file:
            file.write(png)
        check_not_blank(png)
        print(f"desktop window: reply of {len(reply.text)} characters, {final_seen} tokens seen; {screenshot}")
    finally:
        if driver is not None:
            try:
                driver.quit()
            except WebDriverException:
                pass
        tauri_driver.terminate()
        try:
            tauri_driver.wait(timeout=10)
        except subprocess.TimeoutExpired:
            tauri_driver.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binary", help="the sepchat-desktop binary")
    parser.add_argument("screenshot", help="where to save the window's screenshot (PNG)")
    args = parser.parse_args()
    try:
        run(os.path.abspath(args.binary), args.screenshot)
    except (AssertionError, RuntimeError, WebDriverException) as error:
        print(f"desktop end-to-end test FAILED: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

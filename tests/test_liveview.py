"""The live view of ``otel-mixpanel local``, in a real headless Chromium (Debian's, via Selenium).

Needs the Debian packages ``chromium`` and ``chromium-driver`` and the pip package ``selenium``.
Set ``UPDATE_LIVEVIEW_SCREENSHOT=1`` to refresh docs/liveview.png from this test.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).parents[1]
CLI = shutil.which("otel-mixpanel") or str(Path(sys.executable).parent / "otel-mixpanel")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,760",
)
WAIT = 15  # seconds any page change may take; the page polls every 0.5 s


def clean_env() -> Dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def server() -> Iterator[Dict[str, str]]:
    """``otel-mixpanel local`` on a free port: the environment it printed; SIGINT after."""
    process = subprocess.Popen(
        [CLI, "local", "--port", str(free_port())], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=clean_env(),
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None and process.stderr is not None
    stdout = process.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    printed: List[str] = []
    try:
        while not printed or not printed[-1].startswith("# live view:"):
            printed.append(lines.get(timeout=WAIT))
        env = dict(
            line.removeprefix("export ").strip().split("=", 1)
            for line in printed if line.startswith("export ")
        )
        yield env
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)
        stderr = process.stderr.read()
        process.stdout.close()
        process.stderr.close()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless Debian Chromium with a fresh profile, quit after the test."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("needs Debian's browser: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    with tempfile.TemporaryDirectory() as profile:
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        # An explicit driver path: Selenium must not try to download one.
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


def visible_events(driver: WebDriver) -> List[str]:
    try:
        rows = driver.find_elements(By.CSS_SELECTOR, "#events tbody tr")
        return [str(row.get_attribute("data-event")) for row in rows]
    except StaleElementReferenceException:  # re-rendered meanwhile: look again
        return []


def profile_text(driver: WebDriver, distinct_id: str) -> str:
    try:
        cards = driver.find_elements(By.CSS_SELECTOR, "#profiles .profile")
        return next((c.text for c in cards if c.get_attribute("data-id") == distinct_id), "")
    except StaleElementReferenceException:
        return ""


def test_live_view_shows_what_the_quickstart_sends(
    server: Dict[str, str], browser: WebDriver, tmp_path: Path
) -> None:
    """Events appear without a reload, filter by name, open as JSON; profiles show their state."""
    url = server["OTEL_EXPORTER_MIXPANEL_API_HOST"] + "/"
    browser.get(url)
    wait = WebDriverWait(browser, WAIT, poll_frequency=0.1)
    wait.until(lambda d: d.find_element(By.ID, "status").text == "live")
    assert visible_events(browser) == []

    app = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True, text=True, timeout=60, env={**clean_env(), **server}, check=False,
    )
    assert app.returncode == 0, app.stderr

    # Newest first, and without reloading the page.
    wait.until(lambda d: visible_events(d) == ["Purchased", "Signed Up"])
    wait.until(lambda d: "purchases\n1" in profile_text(d, "user-42"))
    profile = profile_text(browser, "user-42")
    assert "plan\npro" in profile and "$email\nada@example.com" in profile
    # Group updates go in their own request, after the profile updates: the page
    # may show them one refresh (half a second) later.
    wait.until(lambda d: "company = acme" in d.find_element(By.ID, "groups").text)
    groups = browser.find_element(By.ID, "groups").text
    assert "company = acme" in groups and "team" in groups

    name_filter = browser.find_element(By.ID, "filter-event")
    name_filter.send_keys("Purch")
    wait.until(lambda d: visible_events(d) == ["Purchased"])
    browser.find_element(By.CSS_SELECTOR, "#events tbody tr").click()
    detail = browser.find_element(By.ID, "detail").text
    assert '"event": "Purchased"' in detail and '"sku": "sku-1"' in detail
    name_filter.clear()
    browser.find_element(By.ID, "filter-distinct").send_keys("user-42")
    wait.until(lambda d: visible_events(d) == ["Purchased", "Signed Up"])

    screenshot = tmp_path / "liveview.png"
    assert browser.save_screenshot(str(screenshot))
    assert 0 < screenshot.stat().st_size < 300_000
    if os.environ.get("UPDATE_LIVEVIEW_SCREENSHOT") == "1":
        shutil.copyfile(screenshot, ROOT / "docs" / "liveview.png")


def test_live_view_escapes_untrusted_data(server: Dict[str, str], browser: WebDriver) -> None:
    """Markup in event names and properties is shown as text, never run or parsed."""
    hostile = '<img src=x onerror="document.title=\'pwned\'">'
    script = (
        "import sys\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from otel_mixpanel import MixpanelSpanExporter\n"
        "p = TracerProvider(); p.add_span_processor(SimpleSpanProcessor(MixpanelSpanExporter()))\n"
        "with p.get_tracer('t').start_as_current_span('s') as s:\n"
        "    s.set_attribute('mixpanel.event', sys.argv[1])\n"
        "    s.set_attribute('mixpanel.user_id', sys.argv[1])\n"
        "    s.set_attribute('mixpanel.people.set.bio', sys.argv[1])\n"
        "p.shutdown()\n"
    )
    browser.get(server["OTEL_EXPORTER_MIXPANEL_API_HOST"] + "/")
    sent = subprocess.run(
        [sys.executable, "-c", script, hostile], capture_output=True, text=True, timeout=60,
        env={**clean_env(), **server}, check=False,
    )
    assert sent.returncode == 0, sent.stderr
    wait = WebDriverWait(browser, WAIT, poll_frequency=0.1)
    wait.until(lambda d: visible_events(d) == [hostile])
    wait.until(lambda d: hostile in profile_text(d, hostile))
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
    assert browser.title != "pwned"

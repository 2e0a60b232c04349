"""The station web page in a real browser: headless Chromium (Debian's chromium and
chromium-driver) driven by Selenium against `cvahash serve` running as its own process
(uvicorn on a free loopback port), over a store indexed here from synthetic audio.

Covers: log in, type a query and see hits, play one (the audio element loads and has a
duration), the spectrogram loads, "more like this", Activity (chart and threshold),
Alerts (play, acknowledge), Station, a CSRF-less POST refused, log out. Screenshots of
each page go to the test's folder (and to $CVAHASH_SCREENSHOTS when set).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from web_store import make_store  # noqa: E402

from cvahash.station.health import Health, write_status  # noqa: E402
from cvahash.station.web.auth import write_password_file  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PASSWORD = "heard a wren at dawn"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                       reason="chromium and chromium-driver are not installed"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    store, _ = make_store(root)
    pw = write_password_file(root / "web-password", PASSWORD)
    status = root / "status.json"
    h = Health(source="device:USB Audio", state="capturing",
               started_at="2024-06-12T04:59:00+00:00",
               last_capture_utc=datetime.now(timezone.utc).isoformat(), windows_total=16,
               windows_per_s=0.2, store_rows=16, retention="on")
    write_status(status, h.snapshot(30.0, root))
    alerts = root / "alerts.jsonl"
    alerts.write_text("".join(json.dumps({
        "watch": "whistler", "query": "a steady whistle", "distance": d, "radius": 24,
        "recording": "x.wav", "offset_s": 0.0, "row": row,
        "capture_utc": f"2024-06-12T0{5 + i}:00:00+00:00", "clock_source": "filename"}) + "\n"
        for i, (d, row) in enumerate([(12, 0), (9, 8)])))
    port = free_port()
    log = open(root / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cvahash", "serve", "--db", str(store), "--port", str(port),
         "--password-file", str(pw), "--status", str(status), "--alerts", str(alerts)],
        stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError((root / "serve.log").read_text()) from None
            time.sleep(0.1)
    yield {"url": f"http://127.0.0.1:{port}", "root": root}
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,1000", "--autoplay-policy=no-user-gesture-required",
                "--mute-audio"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def shoot(driver, tmp_path: Path, name: str) -> Path:
    out = tmp_path / "screens"
    out.mkdir(exist_ok=True)
    # The whole page, not only the window: make the window as tall as the document.
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, 600)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max(height + 120, 600), 3000))
    path = out / f"{name}.png"
    driver.save_screenshot(str(path))
    extra = os.environ.get("CVAHASH_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)
    return path


def wait(driver, timeout=30):
    return WebDriverWait(driver, timeout)


def test_the_pages_in_a_real_browser(server, browser, tmp_path):
    url, d = server["url"], browser

    # Log in (the search page sends us to the login page first).
    d.get(url + "/search")
    wait(d).until(EC.presence_of_element_located((By.ID, "password")))
    assert "/login" in d.current_url
    d.find_element(By.ID, "password").send_keys("not it")
    d.find_element(By.ID, "login").click()
    assert "wrong password" in wait(d).until(
        EC.presence_of_element_located((By.ID, "message"))).text
    d.find_element(By.ID, "password").send_keys(PASSWORD)
    shoot(d, tmp_path, "login")
    d.find_element(By.ID, "login").click()
    wait(d).until(EC.presence_of_element_located((By.ID, "q")))
    assert d.current_url.endswith("/search")

    # Search: type a query, see hits.
    box = d.find_element(By.ID, "q")
    box.send_keys("a steady whistle")
    d.find_element(By.ID, "go").click()
    hits = wait(d).until(EC.presence_of_all_elements_located((By.CSS_SELECTOR, "li.hit")))
    assert len(hits) == 10
    rows = [int(h.get_attribute("data-row")) for h in hits]
    assert len(set(rows)) == 10

    # Spectrograms load (1001 frames wide, 64 mel bands tall).
    wait(d).until(lambda drv: drv.execute_script(
        "return [...document.querySelectorAll('img.spec')].slice(0, 3)"
        ".every(i => i.complete && i.naturalWidth > 0)"))
    size = d.execute_script("const i = document.querySelector('img.spec');"
                            "return [i.naturalWidth, i.naturalHeight]")
    assert size == [1001, 64]
    # The full picture behind each strip is the CLI's figure.
    full = d.execute_script("return document.querySelector('a.full').href")
    assert "/spectrogram/" in full
    shoot(d, tmp_path, "search")

    # Play the first hit: the audio element loads and knows its duration.
    d.execute_script("const a = document.querySelector('li.hit audio'); a.preload = 'auto';"
                     "a.load(); a.play().catch(() => {});")
    wait(d).until(lambda drv: drv.execute_script(
        "const a = document.querySelector('li.hit audio');"
        "return a.readyState >= 1 && isFinite(a.duration) && a.duration > 0"))
    duration = d.execute_script("return document.querySelector('li.hit audio').duration")
    assert 10.0 <= duration <= 12.01  # the 10 s window plus up to 1 s either side
    assert d.execute_script("return document.querySelector('li.hit audio').error") is None

    # More like this: the hit's own window comes back first, at distance 0.
    first_row = rows[0]
    hits[0].find_element(By.CSS_SELECTOR, "a.like").click()
    like = wait(d).until(EC.presence_of_all_elements_located((By.CSS_SELECTOR, "li.hit")))
    assert "sound like window" in d.find_element(By.CSS_SELECTOR, "p.summary").text
    assert int(like[0].get_attribute("data-row")) == first_row
    assert "distance 0" in like[0].text
    shoot(d, tmp_path, "like")

    # Activity: a chart with the threshold shown, and a CSV link.
    d.find_element(By.LINK_TEXT, "Activity").click()
    box = wait(d).until(EC.presence_of_element_located((By.ID, "q")))
    box.send_keys("a steady whistle")
    d.find_element(By.NAME, "top").send_keys("12")
    d.find_element(By.ID, "go").click()
    wait(d).until(EC.presence_of_element_located((By.CSS_SELECTOR, "svg.chart")))
    assert d.find_element(By.ID, "threshold").text == "top 12 nearest windows"
    bars = d.find_elements(By.CSS_SELECTOR, "svg.chart rect")
    assert bars
    assert "/activity.csv?" in d.find_element(By.ID, "csv").get_attribute("href")
    shoot(d, tmp_path, "activity")

    # Alerts: newest first, playable, acknowledged with the page's form.
    d.find_element(By.LINK_TEXT, "Alerts").click()
    alerts = wait(d).until(EC.presence_of_all_elements_located((By.CSS_SELECTOR, "li.alert")))
    assert len(alerts) == 2 and "2024-06-12T06:00:00" in alerts[0].text
    d.execute_script("const a = document.querySelector('li.alert audio'); a.preload = 'auto';"
                     "a.load();")
    wait(d).until(lambda drv: drv.execute_script(
        "const a = document.querySelector('li.alert audio');"
        "return a.readyState >= 1 && a.duration > 0"))
    shoot(d, tmp_path, "alerts")
    alerts[0].find_element(By.CSS_SELECTOR, "button").click()
    wait(d).until(EC.presence_of_element_located((By.CSS_SELECTOR, "li.alert.acked")))

    # A POST without the CSRF token is refused, even from the page itself.
    status = d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/alerts/ack', {method: 'POST', body: new URLSearchParams({id: 'x'})})"
        ".then(r => done(r.status)).catch(e => done(String(e)));")
    assert status == 403

    # Watchlist: add a standing query with the page's form, see it listed, remove it.
    form = d.find_element(By.CSS_SELECTOR, "form.watch-add")
    form.find_element(By.NAME, "q").send_keys("bird chirps")
    radius = form.find_element(By.NAME, "radius")
    radius.clear()
    radius.send_keys("10")
    form.find_element(By.CSS_SELECTOR, "button").click()
    watch = wait(d).until(EC.presence_of_element_located((By.CSS_SELECTOR, "li.watch")))
    assert "bird chirps" in watch.text and "radius 10" in watch.text
    watchlist = json.loads((server["root"] / "watchlist.json").read_text())["watches"]
    assert watchlist == [{"name": "bird chirps", "query": "bird chirps", "radius": 10}]
    shoot(d, tmp_path, "watchlist")
    watch.find_element(By.CSS_SELECTOR, "button").click()
    wait(d).until(lambda drv: not drv.find_elements(By.CSS_SELECTOR, "li.watch"))
    assert json.loads((server["root"] / "watchlist.json").read_text())["watches"] == []

    # Station: health and store.
    d.find_element(By.LINK_TEXT, "Station").click()
    verdict = wait(d).until(EC.presence_of_element_located((By.ID, "verdict")))
    assert verdict.text.startswith("OK")
    assert len(d.find_element(By.ID, "fingerprint").text) >= 8
    shoot(d, tmp_path, "station")

    # A phone-sized window: the search page still works.
    d.set_window_size(412, 915)
    d.get(url + "/search?q=bird+chirps&k=3")
    wait(d).until(EC.presence_of_all_elements_located((By.CSS_SELECTOR, "li.hit")))
    wait(d).until(lambda drv: drv.execute_script(
        "return [...document.querySelectorAll('img.spec')].every(i => i.complete)"))
    shoot(d, tmp_path, "search-phone")
    d.set_window_size(1100, 1000)

    # Log out: the API answers 401 again.
    d.find_element(By.ID, "logout").click()
    wait(d).until(EC.presence_of_element_located((By.ID, "password")))
    status = d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/api/search?q=owl').then(r => done(r.status));")
    assert status == 401
    for name in ("login", "search", "like", "activity", "alerts", "station", "search-phone"):
        assert (tmp_path / "screens" / f"{name}.png").stat().st_size > 5000


def test_a_one_megabyte_query_is_refused_by_the_real_server(server):
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(server["url"] + "/api/search?q=" + "a" * (1 << 20), timeout=30)
        raise AssertionError("a 1 MB query was accepted")
    except urllib.error.HTTPError as exc:
        assert 400 <= exc.code < 500
    except (ConnectionError, urllib.error.URLError):
        pass  # the server closed the connection on the oversized request line: also fine

"""The station web page in-process (Starlette's TestClient): every route, its JSON twin,
bad input, and the security rules. Results are checked against the CLI (`cvahash search
--json`, `--spectrograms`) and against the audio files read independently."""

from __future__ import annotations

import io
import json
import os
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402
from web_store import make_store  # noqa: E402

from cvahash.cli import main  # noqa: E402
from cvahash.station.health import Health, write_status  # noqa: E402
from cvahash.station.web.app import WebSettings, alert_id, create_app  # noqa: E402
from cvahash.station.web.auth import (  # noqa: E402
    LoginLimiter,
    hash_password,
    verify_password,
    write_password_file,
)

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def station(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    store, audio = make_store(root)
    status = root / "status.json"
    h = Health(source="device:default", state="capturing", started_at="2024-06-12T05:00:00",
               last_capture_utc=datetime.now().astimezone().isoformat(), windows_total=16)
    write_status(status, h.snapshot(30.0, root))
    return {"root": root, "store": store, "audio": audio, "status": status}


def cli_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def client(station):
    app = create_app(WebSettings(db=station["store"], status_path=station["status"]))
    with TestClient(app) as c:
        yield c


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


# --- search, like, the JSON twin -----------------------------------------------------------


def test_search_json_is_the_cli_json(client, station, capsys):
    got = client.get("/api/search", params={"q": "a steady whistle", "k": 5}).json()
    want = cli_json(capsys, "search", "a steady whistle", "--db", str(station["store"]),
                    "-k", "5", "--json")
    assert got == want and len(got["hits"]) == 5


def test_search_filters_match_the_cli(client, station, capsys):
    params = {"q": "birds", "k": 20, "since": "2024-06-12T06:00", "until": "2024-06-12",
              "station": "ridge-1"}
    got = client.get("/api/search", params=params).json()
    want = cli_json(capsys, "search", "birds", "--db", str(station["store"]), "-k", "20",
                    "--since", "2024-06-12T06:00", "--until", "2024-06-12", "--station",
                    "ridge-1", "--json")
    assert got == want
    assert got["hits"] and all(h["station"] == "ridge-1" for h in got["hits"])
    assert all(h["capture_time"] >= "2024-06-12T06:00:00Z" for h in got["hits"])


def test_search_page_shows_every_hit_with_audio_spectrogram_and_more_like_this(client):
    api = client.get("/api/search", params={"q": "whistle", "k": 4}).json()
    html = client.get("/search", params={"q": "whistle", "k": 4}).text
    for h in api["hits"]:
        assert f'src="/audio/{h["row"]}.wav"' in html
        assert f'src="/strip/{h["row"]}.png"' in html
        assert f'href="/spectrogram/{h["row"]}.png"' in html
        assert f'href="/like?row={h["row"]}&amp;k=4"' in html
        assert f"distance {h['distance']}" in html
    assert html.count('class="hit"') == 4
    # Axes beside each picture: the demo bundle's mel range (50 Hz-14 kHz) and 10 s.
    assert html.count("<span>14.0 kHz</span>") == 4 and html.count("<span>50 Hz</span>") == 4
    assert html.count("<span>10 s</span>") == 4


def test_more_like_this_is_search_like_of_the_hit_window(client, station, capsys):
    hit = client.get("/api/search", params={"q": "whistle", "k": 1}).json()["hits"][0]
    got = client.get("/api/like", params={"row": hit["row"], "k": 3}).json()
    want = cli_json(capsys, "search", "--like", f"{hit['recording']}@{hit['start_s']:g}",
                    "--db", str(station["store"]), "-k", "3", "--json")
    assert got == want
    assert got["hits"][0]["row"] == hit["row"] and got["hits"][0]["distance"] == 0
    assert client.get("/like", params={"row": hit["row"]}).status_code == 200


# --- activity ------------------------------------------------------------------------------


def test_activity_counts_match_the_search_hits_bucketed_independently(client, station, capsys):
    search = cli_json(capsys, "search", "whistle", "--db", str(station["store"]), "-k", "8",
                      "--json")
    want: dict = {}
    for h in search["hits"]:
        key = (h["capture_time"][:13] + ":00:00Z", h["station"])
        want[key] = want.get(key, 0) + 1
    got = client.get("/api/activity", params={"q": "whistle", "top": 8, "by": "hour"}).json()
    counts = {(b["start"], s): n for b in got["buckets"] for s, n in b["stations"].items() if n}
    assert counts == want and got["total"] == 8 and got["threshold"] == "top"
    cli = cli_json(capsys, "activity", "whistle", "--db", str(station["store"]), "--top", "8",
                   "--json")
    assert cli == got


def test_activity_radius_keeps_only_windows_within_it(client, station, capsys):
    everything = cli_json(capsys, "search", "whistle", "--db", str(station["store"]), "-k",
                          "100", "--json")
    radius = sorted(h["distance"] for h in everything["hits"])[5]
    got = client.get("/api/activity", params={"q": "whistle", "radius": radius,
                                              "by": "day"}).json()
    assert got["total"] == sum(h["distance"] <= radius for h in everything["hits"])
    assert [b["start"] for b in got["buckets"]] == ["2024-06-12T00:00:00Z",
                                                    "2024-06-13T00:00:00Z"][:len(got["buckets"])]


def test_activity_page_and_csv(client):
    html = client.get("/activity", params={"q": "whistle", "top": 6, "by": "hour"}).text
    assert "<svg" in html and "top 6 nearest windows" in html and "/activity.csv?" in html
    r = client.get("/activity.csv", params={"q": "whistle", "top": 6})
    assert r.headers["content-type"].startswith("text/csv")
    rows = r.text.strip().splitlines()
    assert rows[0] == "bucket_start_utc,station,count"
    assert sum(int(line.rsplit(",", 1)[1]) for line in rows[1:]) == 6


def test_activity_command_writes_csv_and_png(station, tmp_path, capsys):
    csv_path, png = tmp_path / "a.csv", tmp_path / "a.png"
    assert main(["activity", "whistle", "--db", str(station["store"]), "--by", "day",
                 "--radius", "64", "--csv", str(csv_path), "--png", str(png)]) == 0
    lines = csv_path.read_text().strip().splitlines()
    assert sum(int(x.rsplit(",", 1)[1]) for x in lines[1:]) == 16  # radius 64: every window
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- audio and pictures by row ---------------------------------------------------------------


def test_audio_is_the_window_with_context_cut_from_the_original(client):
    hit = client.get("/api/search", params={"q": "whistle", "k": 1}).json()["hits"][0]
    r = client.get(f"/audio/{hit['row']}.wav", params={"context": 1})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    got, sr = sf.read(io.BytesIO(r.content), dtype="int16")
    src, sr0 = sf.read(hit["recording"], dtype="int16")
    first = max(0, round((hit["start_s"] - 1) * sr0))
    last = min(len(src), round((hit["end_s"] + 1) * sr0))
    assert sr == sr0 and np.array_equal(got, src[first:last])


def png_pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_full_spectrogram_is_the_cli_figure_and_the_strip_its_log_mel(client, station,
                                                                      tmp_path):
    from matplotlib import colormaps

    from cvahash.model.bundle import ModelBundle
    from cvahash.model.frontend import log_mel

    hit = client.get("/api/search", params={"q": "whistle", "k": 1}).json()["hits"][0]
    r = client.get(f"/spectrogram/{hit['row']}.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    out = tmp_path / "pngs"
    assert main(["search", "whistle", "--db", str(station["store"]), "-k", "1",
                 "--spectrograms", str(out)]) == 0
    (cli_png,) = out.glob("*.png")
    web, cli = png_pixels(r.content), png_pixels(cli_png.read_bytes())
    assert web.shape == cli.shape  # the same figure; only the title differs
    rows = np.flatnonzero((web != cli).any(axis=(1, 2)))
    assert rows.max() < web.shape[0] * 0.2  # every difference lies in the title lines
    assert client.get(f"/spectrogram/{hit['row']}.png").content == r.content  # from the cache

    # The strip: the window's log-mel, recomputed here from the file, in magma.
    strip = png_pixels(client.get(f"/strip/{hit['row']}.png").content)
    params = ModelBundle.open(Path(__file__).parent / "data" / "demo-bundle").frontend_params
    x, sr = sf.read(hit["recording"], dtype="float32")
    import soxr

    x = soxr.resample(x[round(hit["start_s"] * sr):round(hit["end_s"] * sr)], sr,
                      params.sample_rate, quality="HQ")
    mel = log_mel(x, params)[0, 0].T[::-1]
    top = mel.max()
    want = colormaps["magma"](np.clip((mel - top + 80) / 80, 0, 1), bytes=True)[..., :3]
    assert strip.shape == (params.n_mels, mel.shape[1], 3)
    # equal up to rounding: a value on the edge of one of magma's 256 colours may land in
    # its neighbour (up to 3 levels apart in a channel), which happens to a pixel or two
    diff = np.abs(strip.astype(int) - want.astype(int))
    assert diff.max() <= 3 and (diff > 1).mean() < 1e-4


@pytest.mark.parametrize("url, status", [
    ("/audio/99999.wav", 404),
    ("/audio/-1.wav", 404),
    ("/audio/abc.wav", 404),
    ("/audio/99999999999999999999999.wav", 404),
    ("/audio/..%2F..%2Fetc%2Fpasswd.wav", 404),
    ("/audio/%2Fetc%2Fpasswd.wav", 404),
    ("/spectrogram/..%2F..%2Fetc%2Fpasswd.png", 404),
    ("/spectrogram/1e9.png", 404),
    ("/strip/abc.png", 404),
    ("/strip/..%2F1.png", 404),
    ("/audio/1.wav?context=99", 400),
    ("/audio/1.wav?context=nan", 400),
    ("/static/../app.py", 404),
    ("/static/%2e%2e/app.py", 404),
])
def test_bad_ids_and_paths_get_a_message_not_a_file(client, url, status):
    r = client.get(url)
    assert r.status_code == status
    assert "Traceback" not in r.text and "import" not in r.text
    assert len(r.content) < 5000


@pytest.mark.parametrize("params, words", [
    ({"q": "x", "k": "100000"}, "out of range"),
    ({"q": "x", "k": "0"}, "out of range"),
    ({"q": "x", "k": "ten"}, "not a whole number"),
    ({"q": "x", "since": "yesterday"}, "not a date/time"),
    ({"q": "x", "since": "2024-13-45"}, "not a date/time"),
    ({"q": "x", "since": "2024-06-13", "until": "2024-06-12"}, "not before"),
    ({"q": "a" * 60_000}, "characters long"),
])
def test_bad_search_input_is_400_with_a_message(client, params, words):
    for path in ("/api/search", "/search"):
        r = client.get(path, params=params)
        assert r.status_code == 400, (path, r.text[:200])
        assert words in (r.json()["error"] if path.startswith("/api") else r.text)


def test_a_blank_query_is_400_in_the_api_and_an_empty_search_box_on_the_page(client):
    r = client.get("/api/search", params={"q": "   "})
    assert r.status_code == 400 and "type what you want" in r.json()["error"]
    r = client.get("/search", params={"q": "   "})
    assert r.status_code == 200 and 'class="hit"' not in r.text


def test_bad_activity_and_like_input(client):
    assert client.get("/api/activity", params={"q": "x", "top": 3, "radius": 3}).status_code == 400
    assert client.get("/api/activity", params={"q": "x", "by": "week"}).status_code == 400
    assert client.get("/api/activity", params={"q": "x", "radius": 999}).status_code == 400
    assert client.get("/api/like").status_code == 400
    assert client.get("/api/like", params={"row": "../../etc"}).status_code == 404
    assert client.get("/api/like", params={"row": 10**6}).status_code == 404


def test_a_symlink_out_of_the_audio_folder_is_not_served(tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    # Not the same audio as the indexed file: the store would take a copy of a recording
    # it already holds as that recording and not index it again.
    quiet_noise = np.random.default_rng(1).normal(0, 1e-3, 16000 * 12).astype(np.float32)
    sf.write(str(outside / "secret.wav"), quiet_noise, 16000)
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(str(audio / "20240612_050000.wav"), np.zeros(16000 * 12, np.float32), 16000)
    store = tmp_path / "store"
    assert main(["index", str(audio), "--db", str(store), "--bundle",
                 str(Path(__file__).parent / "data" / "demo-bundle"), "--quiet"]) == 0
    capsys.readouterr()
    with TestClient(create_app(WebSettings(db=store))) as c:
        row = c.get("/api/search", params={"q": "silence", "k": 1}).json()["hits"][0]["row"]
        assert c.get(f"/audio/{row}.wav").status_code == 200
        # The indexed file is swapped for a symlink to a file elsewhere: refused.
        os.remove(audio / "20240612_050000.wav")
        os.symlink(outside / "secret.wav", audio / "20240612_050000.wav")
        for url in (f"/audio/{row}.wav", f"/spectrogram/{row}.png", f"/strip/{row}.png",
                    f"/api/like?row={row}"):
            r = c.get(url)
            assert r.status_code == 404 and "outside the audio folders" in r.text, url
    # Configured audio roots: a recording indexed through a symlink (its real path
    # elsewhere) is not served; the folder that really holds it can be allowed.
    os.symlink(outside / "secret.wav", audio / "20240613_050000.wav")
    assert main(["index", str(audio), "--db", str(store), "--quiet"]) == 0
    capsys.readouterr()
    with TestClient(create_app(WebSettings(db=store, audio_roots=(audio,)))) as c:
        hits = c.get("/api/search", params={"q": "silence", "k": 5}).json()["hits"]
        secret = [h["row"] for h in hits if h["recording"] == str(outside / "secret.wav")]
        assert secret
        assert c.get(f"/audio/{secret[0]}.wav").status_code == 404
    with TestClient(create_app(WebSettings(db=store, audio_roots=(outside,)))) as c:
        assert c.get(f"/audio/{secret[0]}.wav").status_code == 200


def test_a_recording_that_is_gone_says_so(tmp_path, capsys):
    root = tmp_path / "gone"
    store, audio = make_store(root)
    capsys.readouterr()
    app = create_app(WebSettings(db=store))
    with TestClient(app) as c:
        hit = c.get("/api/search", params={"q": "whistle", "k": 1}).json()["hits"][0]
        os.remove(hit["recording"])
        r = c.get(f"/audio/{hit['row']}.wav")
        assert r.status_code == 404 and "no longer exists" in r.text
        assert c.get("/api/like", params={"row": hit["row"]}).status_code == 404


# --- missing store or bundle -----------------------------------------------------------------


def test_missing_store_or_bundle_is_explained_on_the_page(tmp_path, station):
    with TestClient(create_app(WebSettings(db=tmp_path / "nowhere"))) as c:
        r = c.get("/search", params={"q": "owl"})
        assert r.status_code == 503 and "is not a code store" in r.text
        assert "cvahash index" in r.text
        assert c.get("/api/search", params={"q": "owl"}).json()["fix"].startswith("start")
        assert "is not a code store" in c.get("/station").text
    with TestClient(create_app(WebSettings(db=station["store"],
                                           bundle=tmp_path / "no-bundle"))) as c:
        r = c.get("/search", params={"q": "owl"})
        assert r.status_code == 503 and "no-bundle" in r.text and "--bundle" in r.text


# --- alerts and station ----------------------------------------------------------------------


def test_alerts_newest_first_playable_and_acknowledged_with_csrf(station, tmp_path):
    log = tmp_path / "alerts.jsonl"
    alerts = [{"watch": "whistler", "query": "a whistle", "distance": d, "radius": 20,
               "recording": "r.wav", "offset_s": 0.0, "row": row,
               "capture_utc": f"2024-06-12T05:0{i}:00+00:00"}
              for i, (d, row) in enumerate([(3, 1), (5, 2), (4, 3)])]
    log.write_text("".join(json.dumps(a) + "\n" for a in alerts) + "{broken\n")
    app = create_app(WebSettings(db=station["store"], alerts_log=log))
    with TestClient(app) as c:
        got = c.get("/api/alerts").json()["alerts"]
        assert [a["row"] for a in got] == [3, 2, 1]
        html = c.get("/alerts").text
        assert html.index('src="/audio/3.wav"') < html.index('src="/audio/1.wav"')
        token = csrf_of(html)
        first = alert_id(alerts[0])
        assert c.post("/alerts/ack", data={"id": first}).status_code == 403  # no token
        assert c.post("/alerts/ack", data={"id": first, "csrf": "forged"}).status_code == 403
        r = c.post("/alerts/ack", data={"id": first, "csrf": token},
                   headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        r = c.post("/alerts/ack", data={"id": first, "csrf": token}, follow_redirects=False)
        assert r.status_code == 303
        acked = {a["row"]: a["acked"] for a in c.get("/api/alerts").json()["alerts"]}
        assert acked == {1: True, 2: False, 3: False}
        token = c.get("/api/alerts").json()["csrf"]  # what a script uses
        r = c.post("/api/alerts/ack", data={"id": alert_id(alerts[1])},
                   headers={"X-CSRF-Token": token})
        assert r.json() == {"acknowledged": [alert_id(alerts[1])]}


def test_station_page_shows_health_and_store(client, station, capsys):
    status = client.get("/api/status").json()
    assert status["verdict"] == "OK" and status["status"]["state"] == "capturing"
    info = client.get("/api/info").json()
    want = cli_json(capsys, "info", "--db", str(station["store"]), "--json") \
        if _info_has_json() else None
    assert info["windows"] == 16 and info["stations"] == {"pond-2": 7, "ridge-1": 9}
    if want:
        assert {k: info[k] for k in want} == want
    html = client.get("/station").text
    assert "OK: device:default (capturing)" in html and info["bundle_fingerprint"] in html


def _info_has_json() -> bool:
    import contextlib

    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(["info", "--help"])
    return True


def test_station_page_without_a_status_file_says_how(tmp_path, station):
    with TestClient(create_app(WebSettings(db=station["store"],
                                           status_path=tmp_path / "none.json"))) as c:
        doc = c.get("/api/status").json()
        assert doc["verdict"] is None and "is the daemon running" in doc["status_error"]


def test_unknown_pages_and_methods(client):
    assert client.get("/nope").status_code == 404
    assert "no page at /nope" in client.get("/nope").text
    assert client.put("/search").status_code in (403, 405)
    r = client.get("/")
    assert r.status_code == 200 and "Search" in r.text


def test_security_headers(client):
    r = client.get("/search")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie


def test_every_asset_is_local(client):
    html = client.get("/search", params={"q": "whistle", "k": 2}).text
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert url.startswith("/"), url
        if url.startswith("/static/"):
            assert client.get(url).status_code == 200


# --- login -----------------------------------------------------------------------------------


@pytest.fixture
def locked(station, tmp_path):
    pw = tmp_path / "web-password"
    write_password_file(pw, PASSWORD)
    app = create_app(WebSettings(db=station["store"], password_file=pw))
    with TestClient(app) as c:
        yield c


def test_password_file_is_scrypt_and_0600(tmp_path):
    pw = write_password_file(tmp_path / "pw", PASSWORD)
    assert oct(pw.stat().st_mode & 0o777) == "0o600"
    line = pw.read_text().strip()
    assert line.startswith("scrypt$") and PASSWORD not in line
    assert verify_password(PASSWORD, line) and not verify_password("wrong", line)
    assert hash_password(PASSWORD) != hash_password(PASSWORD)  # salted
    os.chmod(pw, 0o644)
    with pytest.raises(Exception, match="chmod 600"):
        create_app(WebSettings(db=tmp_path, password_file=pw))


def test_login_required_then_logout(locked):
    r = locked.get("/search?q=owl&k=3", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Fsearch%3Fq%3Dowl%26k%3D3"
    assert locked.get("/api/search", params={"q": "x"}).status_code == 401
    assert locked.get("/audio/1.wav").status_code == 401
    assert locked.get("/spectrogram/1.png").status_code == 401
    assert locked.get("/strip/1.png").status_code == 401
    page = locked.get("/login").text
    token = csrf_of(page)
    assert locked.post("/login", data={"password": PASSWORD}).status_code == 403  # no CSRF
    r = locked.post("/login", data={"password": "nope", "csrf": token})
    assert r.status_code == 401 and "wrong password" in r.text
    r = locked.post("/login", data={"password": PASSWORD, "csrf": token, "next": "//evil.com"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/search"
    assert 'name="next" value="/search?q=owl&amp;k=3"' in locked.get(
        "/login", params={"next": "/search?q=owl&k=3"}).text
    assert locked.get("/api/search", params={"q": "whistle", "k": 1}).status_code == 200
    html = locked.get("/search").text
    new_token = csrf_of(html)
    assert new_token != token  # a fresh token after logging in
    assert locked.post("/logout", data={}).status_code == 403
    r = locked.post("/logout", data={"csrf": new_token}, follow_redirects=False)
    assert r.status_code == 303
    assert locked.get("/api/search", params={"q": "x"}).status_code == 401


def test_login_attempts_are_rate_limited(locked):
    token = csrf_of(locked.get("/login").text)
    codes = [locked.post("/login", data={"password": f"guess{i}", "csrf": token}).status_code
             for i in range(7)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
    r = locked.post("/login", data={"password": PASSWORD, "csrf": token})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


def test_login_limiter_forgets_after_its_window():
    now = [0.0]
    lim = LoginLimiter(attempts=2, window_s=10, clock=lambda: now[0])
    lim.failed("a")
    lim.failed("a")
    assert lim.retry_after("a") == 10 and lim.retry_after("b") == 0
    now[0] = 11
    assert lim.retry_after("a") == 0


def test_serve_refuses_other_addresses_without_a_password(station, tmp_path, capsys):
    rc = main(["serve", "--db", str(station["store"]), "--listen", "0.0.0.0"])
    err = capsys.readouterr().err
    assert rc == 1 and "refusing to listen on 0.0.0.0 without a password" in err
    assert "cvahash web passwd" in err


def test_web_passwd_writes_the_config_folder_file(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "station.toml"
    cfg.write_text('[device]\nname="s"\n[runtime]\nbundle="b"\n[store]\npath="st"\n')
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["web", "passwd", "--config", str(cfg), "--stdin"]) == 0
    line = (tmp_path / "web-password").read_text()
    assert verify_password(PASSWORD, line)
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["web", "passwd", "--config", str(cfg), "--stdin"]) == 1
    assert "too short" in capsys.readouterr().err


def test_activity_chart_bars_are_the_counts(client):
    from xml.etree import ElementTree

    from cvahash.query.activity import Activity
    from cvahash.station.web.charts import activity_svg

    act = Activity(query="q", by="day", threshold="top", value=9, bits=64, fingerprint="f",
                   buckets=["2024-06-12T00:00:00Z", "2024-06-13T00:00:00Z",
                            "2024-06-14T00:00:00Z"],
                   stations=["a", "b"], counts={("2024-06-12T00:00:00Z", "a"): 3,
                                                ("2024-06-12T00:00:00Z", "b"): 1,
                                                ("2024-06-14T00:00:00Z", "b"): 5},
                   total=9)
    svg = ElementTree.fromstring(activity_svg(act))
    ns = "{http://www.w3.org/2000/svg}"
    rects = svg.findall(f"{ns}rect")
    heights = [float(r.get("height")) for r in rects]
    assert len(rects) == 3
    # The axis top is 5 (counts 4 and 5): heights are proportional to the counts.
    assert heights[0] / 3 == pytest.approx(heights[1] / 1, rel=1e-2)
    assert heights[2] / 5 == pytest.approx(heights[0] / 3, rel=1e-2)
    labels = [t.text for t in svg.findall(f"{ns}text")]
    assert "5" in labels and "hits per day" in labels


def test_the_server_reads_beside_a_writer_and_sees_its_commits(tmp_path, capsys):
    """The daemon holds the writer lock and keeps appending: the page searches meanwhile
    and sees every committed window, and the writer is never blocked."""
    from cvahash.store.code_store import CodeStore, Recording, Segment

    store_dir, _ = make_store(tmp_path / "live")
    capsys.readouterr()
    writer = CodeStore.open(store_dir, "a")
    try:
        with TestClient(create_app(WebSettings(db=store_dir))) as c:
            before = c.get("/api/info").json()["windows"]
            assert c.get("/api/search", params={"q": "whistle", "k": 3}).status_code == 200
            codes, _ = writer.read([0, 1])
            rec = Recording(path=str(tmp_path / "new.wav"), station="new-station",
                            start_utc=1718600000.0, sample_rate=16000, duration_s=15.0,
                            content_hash="new")
            writer.append(codes, Segment(recording=rec, first_offset_s=0.0, length_s=10.0,
                                         capture_start_utc=1718600000.0, hop_s=5.0),
                          commit=True)
            assert c.get("/api/info").json()["windows"] == before + 2
            hits = c.get("/api/search", params={"q": "whistle", "k": 100,
                                                "station": "new-station"}).json()["hits"]
            assert len(hits) == 2
    finally:
        writer.close()


def test_serve_settings_come_from_the_config_and_flags(tmp_path):
    import argparse

    from cvahash.commands.serve import check_exposure, settings_from_args

    cfg = tmp_path / "station.toml"
    cfg.write_text('[device]\nname="ridge-4"\n[runtime]\nbundle="bundle"\n[store]\n'
                   'path="store"\n[retention]\nenabled=true\npath="audio"\n[status]\n'
                   'path="status.json"\n[web]\nlisten="0.0.0.0"\nport=8123\n')
    args = argparse.Namespace(config=str(cfg), db=None, bundle=None, listen=None, port=None,
                              password_file=None, status=None, alerts=None, audio_root=None,
                              threads=None)
    settings, listen, port = settings_from_args(args)
    assert (listen, port, settings.threads) == ("0.0.0.0", 8123, 1)
    assert settings.db == tmp_path / "store" and settings.bundle == tmp_path / "bundle"
    assert settings.audio_roots == (tmp_path / "audio",)  # [retention] path by default
    assert settings.password_file == tmp_path / "web-password"
    assert settings.title == "cvahash · ridge-4"
    with pytest.raises(Exception, match=r"web passwd --config .*station.toml"):
        check_exposure(settings, listen)
    write_password_file(tmp_path / "web-password", PASSWORD)
    check_exposure(settings, listen)  # now allowed
    args.listen, args.port = "127.0.0.1", 9000
    assert settings_from_args(args)[1:] == ("127.0.0.1", 9000)


def test_serve_without_the_web_extra_names_the_pip_command(tmp_path, monkeypatch, capsys):
    import builtins
    import sys

    real_import = builtins.__import__

    def no_starlette(name, *args, **kwargs):
        if name.startswith("starlette"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m.startswith("cvahash.station.web")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_starlette)
    assert main(["serve", "--db", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "pip install '.[web]' in the cvahash checkout" in err and "starlette" in err


def test_strip_png_writer_round_trips_through_pil():
    from PIL import Image

    from cvahash.station.web.pictures import png_bytes

    rgb = np.random.default_rng(3).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    got = np.asarray(Image.open(io.BytesIO(png_bytes(rgb))).convert("RGB"))
    assert np.array_equal(got, rgb)


def test_pictures_leave_no_front_end_scratch_behind_and_draw_the_same():
    from cvahash.model import frontend
    from cvahash.station.web.pictures import strip_png

    params = frontend.FrontendParams()
    x = np.random.default_rng(4).standard_normal(params.n_samples).astype(np.float32)
    first = strip_png(x, params)
    assert not hasattr(frontend._scratch, "windowed")  # released: no 20 MB kept per thread
    want = frontend.log_mel(x, params)  # allocates again
    assert np.isfinite(want).all() and strip_png(x, params) == first

"""Watchlist editing from the Alerts page: the web server writes watchlist.json beside the
alerts log (CSRF-protected, validated like `cvahash config check`), and the daemon's
`Watchlist` re-reads that file when it changes and alerts on its watches."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402
from web_store import make_store  # noqa: E402

from cvahash.station.watchlist import Watchlist, web_watchlist_path  # noqa: E402
from cvahash.station.web.app import WebSettings, create_app  # noqa: E402
from cvahash.station.web.auth import write_password_file  # noqa: E402

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("web-watch"))[0]


@pytest.fixture
def web(store, tmp_path):
    log = tmp_path / "alerts.jsonl"
    with TestClient(create_app(WebSettings(db=store, alerts_log=log))) as c:
        yield c, web_watchlist_path(log)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def on_disk(path) -> list[dict]:
    return json.loads(path.read_text())["watches"]


def test_add_and_remove_a_watch_from_the_alerts_page(web):
    c, path = web
    token = csrf_of(c.get("/alerts").text)
    r = c.post("/watchlist/add", data={"csrf": token, "q": "  owl hooting ", "radius": "12"},
               follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/alerts#watchlist"
    assert on_disk(path) == [{"name": "owl hooting", "query": "owl hooting", "radius": 12}]
    r = c.post("/watchlist/add", data={"csrf": token, "q": "woodpecker drumming",
                                       "radius": "0", "name": "drums"})
    assert r.status_code == 200  # followed back to the Alerts page
    html = r.text
    assert "owl hooting" in html and "drums" in html and "woodpecker drumming" in html
    listing = c.get("/api/watchlist").json()
    assert listing["web"] == on_disk(path) and listing["bits"] == 64
    assert listing["file"] == str(path) and listing["config"] == []
    r = c.post("/watchlist/remove", data={"csrf": token, "name": "owl hooting"},
               follow_redirects=False)
    assert r.status_code == 303
    assert on_disk(path) == [{"name": "drums", "query": "woodpecker drumming", "radius": 0}]


def test_the_json_twin_takes_the_csrf_header(web):
    c, path = web
    token = c.get("/api/alerts").json()["csrf"]
    r = c.post("/api/watchlist/add", data={"q": "frog chorus", "radius": 9},
               headers={"X-CSRF-Token": token})
    assert r.json() == {"added": {"name": "frog chorus", "query": "frog chorus", "radius": 9}}
    r = c.post("/api/watchlist/remove", data={"name": "frog chorus"},
               headers={"X-CSRF-Token": token})
    assert r.json() == {"removed": "frog chorus"} and on_disk(path) == []


def test_a_state_change_without_the_csrf_token_is_refused(web):
    c, path = web
    token = csrf_of(c.get("/alerts").text)
    assert c.post("/watchlist/add", data={"q": "owl", "radius": 3}).status_code == 403
    assert c.post("/watchlist/add", data={"q": "owl", "radius": 3, "csrf": "x"}).status_code \
        == 403
    r = c.post("/api/watchlist/add", data={"q": "owl", "radius": 3, "csrf": token},
               headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert not path.exists()
    c.post("/watchlist/add", data={"q": "owl", "radius": 3, "csrf": token})
    assert c.post("/watchlist/remove", data={"name": "owl"}).status_code == 403
    assert [w["name"] for w in on_disk(path)] == ["owl"]


@pytest.mark.parametrize("form, words", [
    ({"q": "owl", "radius": "65"}, "from 0 to 64 (the bundle's code width), got 65"),
    ({"q": "owl", "radius": "-1"}, "from 0 to 64"),
    ({"q": "owl", "radius": "ten"}, "got 'ten'"),
    ({"q": "   ", "radius": "3"}, "type the sound to watch for"),
    ({"q": "x" * 1001, "radius": "3"}, "1001 characters long"),
    ({"q": "owl", "radius": "3", "name": "n" * 65}, "at most 64 characters"),
    ({"q": "owl", "radius": "3", "name": "bad\x07name"}, "printable"),
])
def test_bad_watches_are_400_with_a_message_and_not_written(web, form, words):
    c, path = web
    token = c.get("/api/alerts").json()["csrf"]
    r = c.post("/api/watchlist/add", data=form, headers={"X-CSRF-Token": token})
    assert r.status_code == 400 and words in r.json()["error"]
    assert not path.exists()


def test_names_are_unique_and_removing_an_unknown_one_says_so(web):
    c, path = web
    token = c.get("/api/alerts").json()["csrf"]
    h = {"X-CSRF-Token": token}
    c.post("/api/watchlist/add", data={"q": "owl", "radius": 3}, headers=h)
    r = c.post("/api/watchlist/add", data={"q": "another owl", "radius": 3, "name": "owl"},
               headers=h)
    assert r.status_code == 400 and "exists already" in r.json()["error"]
    r = c.post("/api/watchlist/remove", data={"name": "nightjar"}, headers=h)
    assert r.status_code == 400 and "no watch named 'nightjar'" in r.json()["error"]
    assert len(on_disk(path)) == 1


def test_a_damaged_watchlist_file_is_shown_not_a_crash(web):
    c, path = web
    path.write_text("{not json")
    html = c.get("/alerts").text
    assert "not a readable watchlist file" in html
    token = c.get("/api/alerts").json()["csrf"]
    r = c.post("/api/watchlist/add", data={"q": "owl", "radius": 3},
               headers={"X-CSRF-Token": token})
    assert r.status_code == 400 and "delete it" in r.json()["error"]
    assert path.read_text() == "{not json"


def test_editing_needs_a_login_when_a_password_is_set(store, tmp_path):
    pw = write_password_file(tmp_path / "web-password", PASSWORD)
    log = tmp_path / "alerts.jsonl"
    with TestClient(create_app(WebSettings(db=store, alerts_log=log, password_file=pw))) as c:
        token = csrf_of(c.get("/login").text)
        r = c.post("/watchlist/add", data={"q": "owl", "radius": 3, "csrf": token})
        assert r.status_code == 401 and not web_watchlist_path(log).exists()
        c.post("/login", data={"password": PASSWORD, "csrf": token})
        token = csrf_of(c.get("/alerts").text)  # a fresh token after the login
        r = c.post("/watchlist/add", data={"q": "owl", "radius": 3, "csrf": token})
        assert r.status_code == 200 and on_disk(web_watchlist_path(log))[0]["query"] == "owl"


# --- the daemon's side: Watchlist.follow ------------------------------------------------------


def fake_encoder(table: dict[str, np.ndarray]):
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.stack([table[t] for t in texts])
    encode.calls = calls
    return encode


def test_the_daemon_watchlist_rereads_the_web_file_when_it_changes(tmp_path):
    rng = np.random.default_rng(0)
    owl, frog = rng.integers(0, 256, (2, 8), dtype=np.uint8)
    encode = fake_encoder({"owl": owl, "frog": frog})
    log = tmp_path / "alerts.jsonl"
    path = web_watchlist_path(log)
    wl = Watchlist.from_entries([], encode, log)
    wl.follow(path, encode)
    assert wl.watches == [] and encode.calls == []  # no file: nothing to encode

    near_owl = owl.copy()
    near_owl[0] ^= 0b111  # 3 bits away
    codes = np.stack([near_owl, frog])
    windows = [{"capture_s": 100.0 + i, "row": i} for i in range(2)]
    path.write_text(json.dumps({"watches": [{"name": "o", "query": "owl", "radius": 3}]}))
    got = wl.check(codes, windows)
    assert [(a["watch"], a["row"], a["distance"]) for a in got] == [("o", 0, 3)]
    assert [json.loads(line)["watch"] for line in log.read_text().splitlines()] == ["o"]

    # Changed file: the owl watch is narrower now (no alert), a frog watch appears.
    path.write_text(json.dumps({"watches": [{"name": "o", "query": "owl", "radius": 2},
                                            {"name": "f", "query": "frog", "radius": 0}]}))
    windows = [{"capture_s": 500.0 + i, "row": 10 + i} for i in range(2)]
    got = wl.check(codes, windows)
    assert [(a["watch"], a["row"]) for a in got] == [("f", 11)]
    calls = len(encode.calls)
    wl.check(codes, windows)  # unchanged file: not re-read, not re-encoded
    assert len(encode.calls) == calls

    # A damaged file keeps the watches read before; a removed file drops them.
    path.write_text("{broken")
    wl.check(codes[:0], [])
    assert [w.name for w in wl.watches] == ["o", "f"]
    path.unlink()
    wl.check(codes[:0], [])
    assert wl.watches == []


def test_web_watches_never_shadow_the_config_and_respect_the_code_width(tmp_path):
    code = np.zeros(8, np.uint8)
    encode = fake_encoder({"owl": code, "frog": code})

    class Entry:
        name, query, radius = "owl", "owl", 1

    log = tmp_path / "alerts.jsonl"
    path = web_watchlist_path(log)
    path.write_text(json.dumps({"watches": [{"name": "owl", "query": "frog", "radius": 1},
                                            {"name": "wide", "query": "frog", "radius": 65}]}))
    wl = Watchlist.from_entries([Entry()], encode, log)
    wl.follow(path, encode)
    # The config's "owl" stays the config's; radius 65 > the 64-bit codes is ignored.
    assert [(w.name, w.query, w.from_web) for w in wl.watches] == [("owl", "owl", False)]


@pytest.mark.parametrize("kind", ["fifo", "device", "huge"])
def test_a_watchlist_path_that_is_no_small_regular_file_is_a_message(tmp_path, kind):
    from cvahash.errors import InvalidArgument
    from cvahash.station.watchlist import MAX_WEB_WATCHLIST_BYTES, read_web_watches

    if kind == "fifo":
        path = tmp_path / "watchlist.json"
        os.mkfifo(path)  # opened non-blocking: must not hang
    elif kind == "device":
        path = "/dev/zero"  # unbounded: must not be read
    else:
        path = tmp_path / "watchlist.json"
        path.write_bytes(b" " * (MAX_WEB_WATCHLIST_BYTES + 1))
    with pytest.raises(InvalidArgument, match="not a readable watchlist file"):
        read_web_watches(path)

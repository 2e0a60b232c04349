"""`cvahash archive` end to end on the shipped demo bundle and synthetic soundscapes.

Two stations index synthetic recordings with known events (`cvahash.export.synth`),
build signed updates with the station toolchain, and the office ingests them. The
reference is the station itself: the same updates applied to one station store and
searched with `cvahash search --json`. Also: the engine's URL, password and parameter
handling, and the errors a user sees.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("chdb")

from cvahash.archive import engine as eng  # noqa: E402
from cvahash.cli import main  # noqa: E402
from cvahash.errors import InvalidArgument, MissingExtra  # noqa: E402

DEMO = Path(__file__).parent / "data" / "demo-bundle"
HOSTILE = "marsh'; DROP TABLE ingests; --"


def cli(capsys, *argv):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    """Two stations' updates, the archive holding both, and a station store of both."""
    pytest.importorskip("cvahash.export.synth.corpus")
    from cvahash.export.synth.corpus import make_soundscape

    root = tmp_path_factory.mktemp("network")
    key = root / "lab.key"
    assert main(["keygen", "--out", str(key)]) == 0
    updates = []
    for i, (station, names) in enumerate([
            ("ridge-2", ["20250412_053000.wav", "20250413_220000.wav"]),
            (HOSTILE, ["20250412_230000.wav", "20250413_210000.wav"])]):
        rec = root / f"rec{i}"
        rec.mkdir()
        for j, name in enumerate(names):
            make_soundscape(rec / name, 60.0, 6.0, seed=2 * i + j,
                            call_types=["owl_hooting", "woodpecker_drumming"])
        store = root / f"store{i}"
        assert main(["index", str(rec), "--db", str(store), "--bundle", str(DEMO), "--station",
                     station, "--hop", "5", "--quiet", "--threads", "1"]) == 0
        out = root / f"station{i}.cvaup"
        assert main(["update", "build", "--db", str(store), "--key", str(key), "--out",
                     str(out), "--root", str(root)]) == 0
        updates.append(out)
    pub = Path(str(key) + ".pub")
    for u in updates:
        assert main(["update", "apply", str(u), "--db", str(root / "office-store"), "--trust",
                     str(pub), "--create"]) == 0
    return {"root": root, "updates": updates, "pub": pub, "archive": root / "archive",
            "store": root / "office-store"}


@pytest.fixture(scope="module")
def ingested(network):
    argv = ["archive", "ingest", *network["updates"], "--archive", network["archive"],
            "--trust", network["pub"]]
    assert main([str(a) for a in argv]) == 0
    return network


def search_json(capsys, *argv):
    rc, out, err = cli(capsys, *argv, "--json")
    assert rc == 0, err
    return json.loads(out)


def test_archive_search_json_is_the_station_search(capsys, ingested):
    n = search_json(capsys, "info", "--db", ingested["store"])["windows"]
    assert n >= 40
    for query in (["owl hooting at night"], ["owl hooting at night", "--hamming-only"],
                  ["--like", f"{ingested['root']}/rec0/20250412_053000.wav@10"]):
        station = search_json(capsys, "search", *query, "--db", ingested["store"], "--bundle",
                              DEMO, "-k", n, "--threads", "1")
        office = search_json(capsys, "archive", "search", *query, "--archive",
                             ingested["archive"], "--bundle", DEMO, "-k", n)
        assert office.keys() == station.keys()
        for key in ("query", "mode", "bits", "fingerprint", "k", "truncated", "notes",
                    "order"):
            assert office[key] == station[key]
        assert office["hits"][0].keys() == station["hits"][0].keys()
        # the same windows in the same order: ties by insertion order in both, and the
        # station store applied the updates in the order the archive ingested them
        def same(h):
            return {key: (round(v, 5) if isinstance(v, float) else v)
                    for key, v in h.items() if key != "row"}
        assert [same(h) for h in office["hits"]] == [same(h) for h in station["hits"]]


def test_filters_and_hostile_text_are_data(capsys, ingested):
    common = ["--archive", ingested["archive"], "--bundle", DEMO]
    got = search_json(capsys, "archive", "search", "owl'; DROP TABLE ingests; --", *common,
                      "--station", HOSTILE, "-k", 100)
    assert got["hits"] and {h["station"] for h in got["hits"]} == {HOSTILE}
    got = search_json(capsys, "archive", "search", "owl", *common, "--since", "2025-04-13",
                      "-k", 100)
    assert got["hits"] and all(h["capture_time"] >= "2025-04-13" for h in got["hits"])
    got = search_json(capsys, "archive", "search", "owl", *common, "--until", "2025-04-12",
                      "-k", 100)
    assert got["hits"] and all(h["capture_time"] < "2025-04-13" for h in got["hits"])
    info = search_json(capsys, "archive", "info", "--archive", ingested["archive"])
    assert set(info["stations"]) == {"ridge-2", HOSTILE} and len(info["ingests"]) == 2


def test_activity_csv_and_png(capsys, ingested, tmp_path):
    common = ["--archive", ingested["archive"], "--bundle", DEMO]
    everything = search_json(capsys, "archive", "search", "owl hooting", *common, "-k", 1000)
    radius = sorted(h["distance"] for h in everything["hits"])[len(everything["hits"]) // 2]
    png = tmp_path / "owls.png"
    rc, out, err = cli(capsys, "archive", "activity", "owl hooting", *common, "--radius", radius,
                       "--by", "hour", "--csv", "-", "--png", png)
    assert rc == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    want = {}
    for h in everything["hits"]:
        if h["distance"] <= radius:
            hour = h["capture_time"][:13] + ":00Z"
            want[(h["station"], hour)] = want.get((h["station"], hour), 0) + 1
    assert {(r["station"], r["hour"]): int(r["windows"]) for r in rows} == want
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rc, out, err = cli(capsys, "archive", "activity", "owl hooting", *common, "--top", 5)
    assert rc == 0 and sum(int(line.split()[-1]) for line in out.splitlines()[1:]) == 5


def test_ingest_again_and_refusals_through_the_cli(capsys, ingested, tmp_path):
    argv = ["archive", "ingest", "--archive", ingested["archive"], "--trust", ingested["pub"]]
    rc, out, _ = cli(capsys, *argv, ingested["updates"][0])
    assert rc == 0 and "already ingested" in out
    bad = tmp_path / "bad.cvaup"
    data = bytearray(ingested["updates"][1].read_bytes())
    data[-10] ^= 0x40
    bad.write_bytes(bytes(data))
    rc, _, err = cli(capsys, *argv, bad)
    assert rc == 1 and "sha256 does not match" in err and "Traceback" not in err
    rc, _, err = cli(capsys, "archive", "search", "owl", "--archive", tmp_path / "none",
                     "--bundle", DEMO)
    assert rc == 1 and "cvahash archive ingest" in err
    rc, _, err = cli(capsys, "archive", "info", "--archive", "clickhouse://u:secret@h:1/db")
    assert rc == 1 and "password" in err and "secret" not in err


def test_a_bundle_the_archive_does_not_hold_is_refused(capsys, tmp_path):
    from test_archive import make_store

    from cvahash.update.apply import build_update
    from cvahash.update.format import generate_keypair

    key, pub = generate_keypair(tmp_path / "k")
    update = build_update(make_store(tmp_path / "s", "ridge-2", days=1), key, tmp_path / "u.cvaup")
    assert main(["archive", "ingest", str(update.path), "--archive", str(tmp_path / "a"),
                 "--trust", str(pub)]) == 0
    rc, _, err = cli(capsys, "archive", "search", "owl", "--archive", tmp_path / "a", "--bundle",
                     DEMO)
    assert rc == 1 and "holds no codes of bundle" in err and "bundle-A (64 bits)" in err


def test_a_second_process_gets_a_clear_message(tmp_path):
    from cvahash.archive.archive import Archive

    with Archive.open(tmp_path / "a"):
        r = subprocess.run([sys.executable, "-m", "cvahash", "archive", "info", "--archive",
                            str(tmp_path / "a")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "open in another process" in r.stderr
    assert "Traceback" not in r.stderr


# --- the engine -------------------------------------------------------------------------


def test_url_parsing():
    assert eng.parse_url("clickhouse://office@db.lan:9000/cvahash") == {
        "host": "db.lan", "port": 9000, "username": "office", "database": "cvahash",
        "secure": False}
    assert eng.parse_url("clickhouses://db")["port"] == 8443
    for bad in ("clickhouse://u:pw@h/db", "http://h/db", "clickhouse:///db",
                "clickhouse://h/db;drop"):
        with pytest.raises(InvalidArgument):
            eng.parse_url(bad)


def test_password_from_the_environment_or_an_owner_only_file(tmp_path):
    f = tmp_path / "pw"
    f.write_text("s3cret\n")
    os.chmod(f, 0o644)
    env = {eng.PASSWORD_FILE_ENV: str(f)}
    with pytest.raises(eng.ArchiveError, match="chmod 600"):
        eng.read_password(env)
    os.chmod(f, 0o600)
    assert eng.read_password(env) == "s3cret"
    assert eng.read_password({eng.PASSWORD_ENV: "x", **env}) == "x"
    assert eng.read_password({}) == ""


@pytest.mark.parametrize("value", ["a\\tb", "x'; DROP TABLE x; --", "tab\there", "nl\nx",
                                   "{s:String}", "\\N", "ünï"])
def test_parameters_come_back_as_given(tmp_path, value):
    with eng.ChdbEngine(tmp_path / "a") as e:
        row = e.query("SELECT {s:String} AS s, {a:Array(String)} AS a",
                      {"s": value, "a": [value, "b"]}).to_pylist()[0]
    assert row == {"s": value, "a": [value, "b"]}


def test_without_the_archive_extra_the_message_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "chdb", None)
    with pytest.raises(MissingExtra, match=r"pip install '\.\[archive\]'"):
        eng.ChdbEngine(tmp_path / "a")


@pytest.mark.skipif(not os.environ.get("CVAHASH_TEST_CLICKHOUSE_URL"),
                    reason="set CVAHASH_TEST_CLICKHOUSE_URL=clickhouse://user@host:port/db "
                           "(an empty database) to run the archive tests on a server")
def test_a_server_archive_answers_like_the_kernel(tmp_path):
    from test_archive import make_store

    from cvahash.archive.archive import Archive
    from cvahash.kernel.hamming import knn
    from cvahash.update.apply import build_update
    from cvahash.update.format import generate_keypair

    key, pub = generate_keypair(tmp_path / "k")
    update = build_update(make_store(tmp_path / "s", HOSTILE, days=2), key, tmp_path / "u.cvaup")
    with Archive.open(os.environ["CVAHASH_TEST_CLICKHOUSE_URL"]) as archive:
        archive.ingest([update.path], [pub])
        archive.ingest([update.path], [pub])
        view = archive.view("bundle-A")
        q = np.random.default_rng(1).integers(0, 256, (1, 8), dtype=np.uint8)
        hits = view.search(q, 10, station=HOSTILE)[0]
    from cvahash.store.code_store import CodeStore
    with CodeStore.open(tmp_path / "s") as store:
        codes = np.ascontiguousarray(store.codes)
    assert [h.distance for h in hits] == knn(q, codes, 10)[0][0].tolist()

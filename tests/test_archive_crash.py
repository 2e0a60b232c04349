"""SIGKILL during `archive ingest`, then a rerun: exactly the rows of a clean ingest.

A child process ingests a large update into a chDB archive folder that already holds
another update, and is killed with SIGKILL at a random moment (half of the kills aimed
at the moment the code rows are being inserted). After each kill the archive must show
its old content or old + new (never part of an update), and a rerun must leave exactly
the rows of a clean ingest, with no leftover rows of the killed attempt on disk.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("chdb")

from cvahash.archive.archive import Archive  # noqa: E402
from cvahash.update.format import (  # noqa: E402
    ROW_DTYPE,
    generate_keypair,
    pack_update,
    write_update,
)

KILLS = 6  # two of each: random, during the insert, between the insert and the ledger
ROWS = 400_000

CHILD = """
import sys, time
from cvahash.archive.engine import ChdbEngine
from cvahash.archive.archive import Archive
insert = ChdbEngine.insert
def announced(self, table, data, settings=None):
    if table.startswith("codes_"):
        print("rows", flush=True)
    insert(self, table, data, settings)
    if table.startswith("codes_") and "pause" in sys.argv:
        print("inserted", flush=True)  # rows on disk, ledger row not yet written
        time.sleep(30)
ChdbEngine.insert = announced
print("go", flush=True)
with Archive.open(sys.argv[1]) as archive:
    archive.ingest([a for a in sys.argv[2:-1] if a != "pause"], [sys.argv[-1]])
print("done", flush=True)
"""


def make_update(path, key, station, rows, seed):
    rng = np.random.default_rng(seed)
    per = 2_000
    nrec = rows // per
    recs = [{"path": f"{station}/{i}.flac", "station": station, "content_hash": f"h{seed}-{i}",
             "start_utc": 1.75e9 + i * 86400 / 8, "sample_rate": 48000, "duration_s": per * 5.0}
            for i in range(nrec)]
    r = np.zeros(rows, ROW_DTYPE)
    r["recording"] = np.repeat(np.arange(nrec), per)
    j = np.tile(np.arange(per), nrec)
    r["offset_s"] = j * 5.0
    r["length_s"] = 10.0
    r["capture_utc"] = 1.75e9 + r["recording"] * 86400 / 8 + j * 5.0
    codes = rng.integers(0, 256, (rows, 8), dtype=np.uint8)
    from cvahash.update.format import load_private_key
    write_update(path, pack_update(private_key=load_private_key(key), fingerprint="bundle-A",
                                   bits=64, codes=codes, rows=r, recordings=recs,
                                   clocks=["gps"], created="2025-04-01T00:00:00+00:00"))
    return path


def state(folder):
    """(visible windows, hash of their content, rows on disk including invisible ones)."""
    with Archive.open(folder) as archive:
        bundle = archive.bundles()["bundle-A"]
        vis = archive.engine.query(
            f"SELECT count() AS n, sum(cityHash64(station, capture, recording, offset_us, "
            f"clock, c0)) AS h FROM {bundle.table} WHERE batch IN (SELECT batch FROM ingests)"
        ).to_pylist()[0]
        disk = archive.engine.query(f"SELECT count() AS n FROM {bundle.table}").to_pylist()[0]
        return vis["n"], vis["h"], disk["n"]


def child(folder, files, pub, pause=False):
    return subprocess.Popen([sys.executable, "-c", CHILD, str(folder), *map(str, files),
                             *(["pause"] if pause else []), str(pub)],
                            stdout=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_during_ingest_then_rerun_gives_a_clean_ingest(tmp_path):
    key, pub = generate_keypair(tmp_path / "k")
    old = make_update(tmp_path / "old.cvaup", key, "ridge-2", 20_000, 1)
    new = make_update(tmp_path / "new.cvaup", key, "marsh", ROWS, 2)

    clean = tmp_path / "clean"
    with Archive.open(clean) as archive:
        archive.ingest([old], [pub])
    before = state(clean)
    t = time.monotonic()
    with Archive.open(clean) as archive:
        archive.ingest([new], [pub])
    took = time.monotonic() - t
    after = state(clean)
    assert after[0] == 20_000 + ROWS and after[2] == after[0]

    rng = random.Random(7)
    outcomes = []
    for i in range(KILLS):
        folder = tmp_path / f"a{i}"
        with Archive.open(folder) as archive:
            archive.ingest([old], [pub])
        proc = child(folder, [new], pub, pause=i % 3 == 2)
        assert proc.stdout.readline().strip() == "go"
        if i % 3 == 1:  # aim at the insert of the code rows
            assert proc.stdout.readline().strip() == "rows"
            time.sleep(rng.uniform(0, 0.3))
        elif i % 3 == 2:  # the rows are in, the ledger row is not: the worst moment
            assert proc.stdout.readline().strip() == "rows"
            assert proc.stdout.readline().strip() == "inserted"
        else:
            time.sleep(rng.uniform(0.2, 1.5 + took))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen = state(folder)
        assert seen[:2] in (before[:2], after[:2])  # all of the update or none of it
        outcomes.append(seen[:2] == after[:2])
        if i % 3 == 2:
            assert seen[2] == before[0] + ROWS  # written but never visible
        rerun = child(folder, [new], pub)
        assert rerun.stdout.read().split()[-1] == "done" and rerun.wait() == 0
        assert state(folder) == after  # the rows of a clean ingest, nothing left over
    assert not all(outcomes), "no kill landed inside an ingest; the test proves nothing"

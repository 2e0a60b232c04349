"""`cvahash check` and `cvahash repair` on the damage the hostile-input trial found,
and the store's own boundaries (dates, stores made before journals)."""

from __future__ import annotations

import json
import os
import sqlite3

import numpy as np
import pytest
from test_store_support import (
    BASE,
    BITS,
    FP,
    PER_REC,
    check_rows,
    recording_of,
    row_codes,
    windows_for,
)

from cvahash.cli import main
from cvahash.errors import InvalidArgument, StoreCorrupt
from cvahash.store.code_store import CodeStore, Recording, Segment, Window

N = 280


def _store(path):
    with CodeStore.create(path, BITS, FP) as s:
        for first in range(0, N, 23):
            m = min(23, N - first)
            s.append(row_codes(range(first, first + m)), windows_for(first, m, first % 2 == 0))
    return path


def _cli(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_clean_store_checks_clean(tmp_path, capsys):
    d = _store(tmp_path / "s")
    rc, out = _cli(capsys, "check", "--db", str(d))
    assert rc == 0 and "clean (280 windows, 8 recordings" in out
    rc, out = _cli(capsys, "check", "--db", str(d), "--json")
    assert rc == 0 and json.loads(out) == {"store": str(d), "clean": True, "problems": [],
                                           "windows": 280}


def test_flipped_committed_rows_is_refused_and_repaired_losslessly(tmp_path, capsys):
    d = _store(tmp_path / "s")
    conn = sqlite3.connect(d / "meta.sqlite")
    conn.execute("UPDATE store_info SET value = 24 WHERE key = 'committed_rows'")
    conn.commit()
    conn.close()
    for mode in ("r", "a"):             # neither a reader nor a writer trusts it
        with pytest.raises(StoreCorrupt, match=r"cvahash repair --db"):
            CodeStore.open(d, mode)
    rc, out = _cli(capsys, "check", "--db", str(d))
    assert rc == 1 and "DAMAGED" in out and "meta.sqlite" in out
    rc, out = _cli(capsys, "repair", "--db", str(d))
    assert rc == 0 and "280 windows kept" in out and "lost" not in out
    assert list(tmp_path.glob("s.backup-*"))
    with CodeStore.open(d) as s:
        assert s.durable_rows == 280
        check_rows(s)


def test_cut_code_file_names_the_lost_windows_and_index_redoes_them(tmp_path, capsys):
    d = _store(tmp_path / "s")
    os.truncate(d / "codes-000000.bin", 128 + 8 * N - 3)        # a few bytes short
    with pytest.raises(StoreCorrupt, match="cvahash repair --db") as e:
        CodeStore.open(d)
    assert "CodeStore.open" not in str(e.value)
    rc, out = _cli(capsys, "repair", "--db", str(d), "--json")
    report = json.loads(out)
    assert rc == 0 and report["clean"]
    last = recording_of(N - 1)
    # the last row's bytes are gone: its block of 16 rows cannot be proven
    assert report["lost"] and all(x["recording"] == last.path for x in report["lost"])
    assert report["retired"] == [{"recording": last.path, "windows": N - 7 * PER_REC}]
    assert report["windows"] == 7 * PER_REC
    with CodeStore.open(d, "a") as s:
        assert not s.has_recording(last.path, last.content_hash)    # index will redo it
        assert s.has_recording(recording_of(0).path, recording_of(0).content_hash)
        first = 7 * PER_REC
        s.append(row_codes(range(first, N)), windows_for(first, N - first, False))
    with CodeStore.open(d) as s:
        assert len(s) == N
        for q in (0, 100, N - 1):                     # every window is back, exactly
            hit = s.search(row_codes([q]), 1)[0][0]
            assert hit.distance == 0 and hit.recording == recording_of(q)
            assert abs(hit.capture_utc - (BASE + 5.0 * q)) < 1e-4
    assert _cli(capsys, "check", "--db", str(d))[0] == 0


def test_flipped_code_bit_is_refused_not_answered(tmp_path, capsys):
    d = _store(tmp_path / "s")
    with open(d / "codes-000000.bin", "r+b") as f:
        f.seek(128 + 8 * 100 + 2)
        b = f.read(1)[0]
        f.seek(128 + 8 * 100 + 2)
        f.write(bytes([b ^ 0x20]))
    with CodeStore.open(d) as s, \
            pytest.raises(StoreCorrupt, match=r"rows 92-107, recordings rec-00002.wav"):
        s.search(row_codes([5]), 3)
    rc, out = _cli(capsys, "check", "--db", str(d))
    assert rc == 1 and "fail their checksum" in out and "rec-00002.wav" in out
    rc, out = _cli(capsys, "repair", "--db", str(d))
    assert rc == 0 and "rec-00002.wav" in out
    with CodeStore.open(d) as s:
        codes, wins = s.read([w.row for seg, _ in s.iter_segments()
                              for w in [seg.window(0)]])
        for c, w in zip(codes, wins, strict=True):
            r = round((w.capture_utc - BASE) / 5.0)
            np.testing.assert_array_equal(c, row_codes([r])[0])


def test_damaged_sqlite_is_rebuilt_from_the_journal(tmp_path, capsys):
    d = _store(tmp_path / "s")
    (d / "meta.sqlite").write_bytes(b"\0" * 4096)
    (d / "meta.sqlite-wal").unlink(missing_ok=True)
    (d / "meta.sqlite-shm").unlink(missing_ok=True)
    assert _cli(capsys, "check", "--db", str(d))[0] == 1
    rc, out = _cli(capsys, "repair", "--db", str(d))
    assert rc == 0 and "280 windows kept" in out
    with CodeStore.open(d) as s:
        check_rows(s)


def test_repair_refuses_while_a_writer_runs(tmp_path, capsys):
    d = _store(tmp_path / "s")
    with CodeStore.open(d, "a"):
        rc, out = _cli(capsys, "repair", "--db", str(d))
    assert rc == 1 and "stop it" in out and not list(tmp_path.glob("s.backup-*"))


@pytest.mark.parametrize("when", [1e300, 253402300800.0, -1.0])    # far future, year 10000
def test_dates_outside_1970_2200_are_refused_at_the_store(tmp_path, when):
    with CodeStore.create(tmp_path / "s", BITS, FP) as s:
        rec = Recording(path="x.wav", start_utc=when)
        with pytest.raises(InvalidArgument, match="1970-01-01..2200-01-01"):
            s.append(row_codes([0]), Segment(recording=rec, first_offset_s=0.0,
                                             length_s=1.0, capture_start_utc=BASE))
        with pytest.raises(InvalidArgument, match="1970-01-01..2200-01-01"):
            s.append(row_codes([0]), [Window(recording=Recording(path="y.wav"),
                                             offset_s=0.0, length_s=1.0, capture_utc=when)])
        with pytest.raises(InvalidArgument, match="last window"):
            s.append(row_codes(range(3)), Segment(
                recording=Recording(path="z.wav"), first_offset_s=0.0, length_s=1.0,
                capture_start_utc=7258118000.0, hop_s=300.0))
        assert len(s) == 0
        s.append(row_codes([0]), windows_for(0, 1, True))
    with CodeStore.open(tmp_path / "s") as s:
        assert len(s) == 1 and s.stats()["first_capture_utc"] == BASE


def test_store_made_before_journals_gets_one_on_first_write(tmp_path, capsys):
    d = _store(tmp_path / "s")
    (d / "journal-000000.bin").unlink()
    conn = sqlite3.connect(d / "meta.sqlite")
    conn.execute("DELETE FROM store_info WHERE key IN ('journal', 'info_crc', 'tags_crc')")
    conn.commit()
    conn.close()
    with CodeStore.open(d) as s:                    # read as before
        check_rows(s)
    with CodeStore.open(d, "a") as s:               # the first writer writes a journal
        s.append(row_codes(range(N, N + 5)), windows_for(N, 5, False))
    assert (d / "journal-000000.bin").exists()
    assert _cli(capsys, "check", "--db", str(d))[0] == 0
    with CodeStore.open(d) as s:
        assert s.durable_rows == N + 5
        check_rows(s)

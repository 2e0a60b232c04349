"""The code store under crashes and damage: SIGKILLed writers, torn and flipped files,
a lost WAL, a full disk. Each case either recovers to a consistent prefix or refuses with
StoreError/StoreCorrupt; it never crashes and never returns a wrong row.

A SIGKILL stops the writer at any instruction but keeps what the kernel already has in
its page cache, so it tests the order of the commit protocol; that fsync reaches the
card is the OS's promise. The truncated-file and lost-WAL cases stand in for a card
that did lose unsynced data."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import time

import numpy as np
import pytest
from test_store_support import BASE, BITS, FP, PER_REC, check_rows, row_codes, windows_for

from cvahash.errors import StoreCorrupt, StoreError
from cvahash.store import format as store_format
from cvahash.store.code_store import CodeStore

CODES = "codes-000000.bin"


def _writer_child(path, seed: int, ack_fd: int) -> None:
    """Append forever, writing "<durable rows> <tag or ->" to ack_fd after every
    acknowledged commit. Runs in a forked child; never returns."""
    try:
        rng = np.random.default_rng(seed)
        store = CodeStore.open(path, "a", commit_every_windows=int(rng.integers(1, 40)))
        row = store.durable_rows
        os.write(ack_fd, f"{row} -\n".encode())
        while True:
            n = int(rng.integers(1, 25))
            tag = f"t{row}" if rng.random() < 0.1 else None
            store.append(row_codes(range(row, row + n)), windows_for(row, n, rng.random() < 0.3),
                         tag=tag)
            row += n
            if rng.random() < 0.2:
                store.flush()
            if store.pending_rows == 0:        # everything appended so far is durable
                os.write(ack_fd, f"{store.durable_rows} {tag or '-'}\n".encode())
    finally:
        os._exit(0)


def _run_and_kill(path, seed: int, rng) -> tuple[int, list[str]]:
    """Fork a writer, SIGKILL it at a random moment; return (acked rows, acked tags)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _writer_child(path, seed, w)
    os.close(w)
    first = os.read(r, 64)            # the child has opened the store
    assert first, "writer child died before opening the store"
    time.sleep(float(rng.uniform(0, 0.04)))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    data = first
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    lines = [ln.split() for ln in data.decode().splitlines() if ln.strip()]
    complete = [ln for ln in lines if len(ln) == 2]
    return int(complete[-1][0]), [t for _, t in complete if t != "-"]


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path):
    path = tmp_path / "s"
    CodeStore.create(path, BITS, FP).close()
    rng = np.random.default_rng(2024)
    tags: list[str] = []
    for i in range(60):
        acked, new_tags = _run_and_kill(path, 1000 + i, rng)
        tags += new_tags
        with CodeStore.open(path) as store:
            store.check()
            assert store.durable_rows >= acked, f"kill {i}: lost acknowledged rows"
            check_rows(store)
            assert all(store.has_tag(t) for t in tags)
            assert len(store) == store.durable_rows
    assert acked > 100


def _filled_store(path, n=300, batch=23):
    with CodeStore.create(path, BITS, FP) as s:
        for first in range(0, n, batch):
            m = min(batch, n - first)
            s.append(row_codes(range(first, first + m)), windows_for(first, m, first % 2 == 0))
    return path


def _assert_consistent(store) -> None:
    """What the store shows is right: every segment's codes and windows, and search hits
    (over the searchable rows: a recovery retires recordings that lost windows)."""
    store.check()
    live = []
    for seg, codes in store.iter_segments():
        rows = np.arange(seg.first_row, seg.first_row + seg.n_rows)
        np.testing.assert_array_equal(codes, row_codes(rows))
        live += rows.tolist()
    check_rows(store, live)
    assert len(store) == len(live)
    if live:
        d, rows = store.search_rows(row_codes([live[0], live[-1]]), 3)
        assert (d[:, 0] == 0).all() and rows[0, 0] == live[0]
        for h in store.search(row_codes([5]), 4)[0]:
            assert abs(h.capture_utc - (BASE + 5.0 * h.row)) < 1e-4


def test_truncated_code_file_recovers_prefix_or_refuses(tmp_path):
    src = _filled_store(tmp_path / "src")
    size = (src / CODES).stat().st_size
    rng = np.random.default_rng(3)
    offsets = sorted({0, 1, 127, 128, 129, 136, size - 1, size,
                      *rng.integers(0, size, 30).tolist()})
    for off in offsets:
        d = tmp_path / f"cut{off}"
        shutil.copytree(src, d)
        os.truncate(d / CODES, off)
        keep = max(0, (off - 128) // 8)
        if off >= size:
            with CodeStore.open(d) as s:
                _assert_consistent(s)
                assert s.durable_rows == 300
            continue
        with pytest.raises(StoreCorrupt, match="damaged|lost data"):
            CodeStore.open(d)                    # read-only: refuse, say what to do
        if off < 128:
            with pytest.raises(StoreCorrupt, match="damaged"):
                CodeStore.open(d, "a")
            continue
        with CodeStore.open(d, "a") as s:        # append mode: keep the prefix that remains
            assert s.durable_rows == keep
            _assert_consistent(s)
            s.append(row_codes(range(keep, keep + 5)), windows_for(keep, 5, False))
        with CodeStore.open(d) as s:
            assert s.durable_rows == keep + 5
            _assert_consistent(s)


def test_every_flipped_header_byte_is_refused(tmp_path):
    src = _filled_store(tmp_path / "src", n=40)
    for pos in range(128):
        d = tmp_path / f"flip{pos}"
        shutil.copytree(src, d)
        with open(d / CODES, "r+b") as f:
            f.seek(pos)
            b = f.read(1)[0]
            f.seek(pos)
            f.write(bytes([b ^ 0x10]))
        for mode in ("r", "a"):
            with pytest.raises(StoreCorrupt, match=CODES):
                CodeStore.open(d, mode)
        shutil.rmtree(d)


def test_flipped_sqlite_bytes_never_give_wrong_rows(tmp_path):
    src = _filled_store(tmp_path / "src")
    db = src / "meta.sqlite"
    assert not (src / "meta.sqlite-wal").exists() or (src / "meta.sqlite-wal").stat().st_size == 0
    size = db.stat().st_size
    rng = np.random.default_rng(11)
    outcomes = {"ok": 0, "refused": 0}
    for pos in rng.integers(0, size, 80).tolist():
        d = tmp_path / f"flip{pos}"
        shutil.copytree(src, d)
        with open(d / "meta.sqlite", "r+b") as f:
            f.seek(pos)
            b = f.read(1)[0]
            f.seek(pos)
            f.write(bytes([b ^ int(rng.integers(1, 256))]))
        try:
            with CodeStore.open(d) as s:
                _assert_consistent(s)
            with CodeStore.open(d, "a") as s:
                n = s.durable_rows
                s.append(row_codes(range(n, n + 3)), windows_for(n, 3, False))
                _assert_consistent(s)
            outcomes["ok"] += 1
        except StoreError as e:                  # StoreCorrupt included
            assert str(d) in str(e)
            outcomes["refused"] += 1
        shutil.rmtree(d)
    assert outcomes["refused"] > 0 and outcomes["ok"] > 0


def test_deleted_wal_loses_nothing_acknowledged(tmp_path):
    """A lost WAL used to roll the store back silently; the journal now brings every
    commit back (a reader refuses until a writer has rolled them forward)."""
    path = tmp_path / "s"
    CodeStore.create(path, BITS, FP).close()
    rng = np.random.default_rng(5)
    for i in range(6):
        acked, _ = _run_and_kill(path, 77 + i, rng)
        for suffix in ("-wal", "-shm"):
            (path / f"meta.sqlite{suffix}").unlink(missing_ok=True)
        try:
            with CodeStore.open(path) as s:
                _assert_consistent(s)
        except StoreCorrupt as e:            # metadata behind its journal: says what to run
            assert "cvahash" in str(e) and str(path) in str(e)
        with CodeStore.open(path, "a") as s:
            _assert_consistent(s)
            assert s.durable_rows >= acked, f"kill {i}: lost acknowledged rows"


def test_full_disk_keeps_rows_buffered_and_store_consistent(tmp_path, monkeypatch):
    path = _filled_store(tmp_path / "s", n=30)
    real_pwrite = os.pwrite

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    with CodeStore.open(path, "a") as s:
        monkeypatch.setattr(store_format.os, "pwrite", full)
        with pytest.raises(StoreError, match="full"):
            s.append(row_codes(range(30, 40)), windows_for(30, 10, False))
        assert s.pending_rows == 10 and s.durable_rows == 30
        with CodeStore.open(path) as r:
            _assert_consistent(r)
            assert r.durable_rows == 30
        monkeypatch.setattr(store_format.os, "pwrite", real_pwrite)
        assert s.flush() == 40
    with CodeStore.open(path) as r:
        _assert_consistent(r)
        assert r.durable_rows == 40


def _retention_child(path, seed: int, first: int, ack_fd: int) -> None:
    """Append rows first, first+1, ... while forgetting and compacting now and then.
    Writes "A <end>" once rows < end are durable, "f <rec>" before and "F <rec>" after a
    forget. Runs in a forked child; never returns."""
    try:
        rng = np.random.default_rng(seed)
        store = CodeStore.open(path, "a", commit_every_windows=int(rng.integers(1, 30)))
        row = first
        stored = [int(r.path[4:9]) for r in store.recordings()]
        os.write(ack_fd, f"A {row}\n".encode())
        while True:
            n = int(rng.integers(1, 20))
            store.append(row_codes(range(row, row + n)), windows_for(row, n, False))
            row += n
            if store.pending_rows == 0:
                os.write(ack_fd, f"A {row}\n".encode())
            roll = rng.random()
            if roll < 0.1 and stored:
                rec = stored.pop(int(rng.integers(0, len(stored))))
                os.write(ack_fd, f"f {rec}\n".encode())
                store.forget(f"rec-{rec:05d}.wav")      # flushes first
                os.write(ack_fd, f"F {rec}\nA {row}\n".encode())
            elif roll < 0.2:
                store.compact()                         # flushes first
                os.write(ack_fd, f"A {row}\n".encode())
    finally:
        os._exit(0)


@pytest.mark.slow
def test_sigkill_during_forget_and_compact(tmp_path):
    path = tmp_path / "s"
    CodeStore.create(path, BITS, FP).close()
    rng = np.random.default_rng(99)
    expected: set[int] = set()        # rows acknowledged and never (maybe) forgotten
    maybe_forgotten: set[int] = set()
    appended_ranges = []
    for i in range(30):
        first = (i + 1) * 100 * PER_REC          # each child its own recordings
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _retention_child(path, 500 + i, first, w)
        os.close(w)
        data = os.read(r, 64)
        time.sleep(float(rng.uniform(0, 0.15)))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        while chunk := os.read(r, 1 << 16):
            data += chunk
        os.close(r)
        acked = first
        for line in data.decode().splitlines():
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                continue                           # a line cut by the kill
            if parts[0] == "A":
                acked = max(acked, int(parts[1]))
            else:
                maybe_forgotten.add(int(parts[1]))
        appended_ranges.append((first, first + 100 * PER_REC))
        expected |= set(range(first, acked))
        expected = {x for x in expected if x // PER_REC not in maybe_forgotten}

        with CodeStore.open(path) as store:
            store.check()
            live = []
            for seg, codes in store.iter_segments():
                orig0 = round((seg.capture_start_utc - BASE) / 5.0)
                origs = np.arange(orig0, orig0 + seg.n_rows)
                np.testing.assert_array_equal(codes, row_codes(origs))
                assert seg.recording.path == f"rec-{orig0 // PER_REC:05d}.wav"
                live += origs.tolist()
            assert len(live) == len(set(live)) == len(store), f"kill {i}: duplicated rows"
            missing = expected - set(live)
            assert not missing, f"kill {i}: lost acknowledged rows {sorted(missing)[:5]}"
            assert all(any(a <= x < b for a, b in appended_ranges) for x in live)
    with CodeStore.open(path, "a") as store:     # a writer cleans what a cut compact left
        assert len(list(path.glob("codes-*"))) == 1
    # the kills did land among forgets and compactions
    assert maybe_forgotten and not (path / "codes-000000.bin").exists()


def test_failed_tagged_batch_is_not_stored_without_its_tag(tmp_path, monkeypatch):
    path = _filled_store(tmp_path / "s", n=30)
    real_pwrite = os.pwrite

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    with CodeStore.open(path, "a", commit_every_windows=100) as s:
        s.append(row_codes(range(30, 35)), windows_for(30, 5, False))     # buffered
        monkeypatch.setattr(store_format.os, "pwrite", full)
        with pytest.raises(StoreError, match="full"):
            s.append(row_codes(range(35, 45)), windows_for(35, 10, False), tag="upd")
        monkeypatch.setattr(store_format.os, "pwrite", real_pwrite)
        assert s.pending_rows == 5 and s.flush() == 35 and not s.has_tag("upd")
        assert s.append(row_codes(range(35, 45)), windows_for(35, 10, False), tag="upd")
        _assert_consistent(s)
        assert s.durable_rows == 45 and s.has_tag("upd")

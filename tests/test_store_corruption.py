"""The corruption suite: flip, cut and delete every file of a code store at many
positions and ask the store the same questions as before.

Each case must end in one of two ways: refused with a message (StoreError naming the
store), or answered exactly as before. Never a silent difference, never a traceback.
Refused cases then go through ``cvahash repair``: afterwards ``cvahash check`` passes
and every window still in the store is exactly right (its codes and metadata are a
function of its row in the reference). The counts are printed for
docs/benchmarks/integrity.md (``pytest -s tests/test_store_corruption.py``).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter

import numpy as np
import pytest
from test_store_support import BASE, BITS, FP, HOP, PER_REC, recording_of, row_codes, windows_for

from cvahash.errors import StoreError
from cvahash.store.code_store import CodeStore
from cvahash.store.doctor import diagnose, repair

N_ROWS = 300


def _build(path):
    """Commits of several sizes, a tagged batch, a forgotten recording, a reader-visible
    WAL (the store is left as a closed writer leaves it)."""
    with CodeStore.create(path, BITS, FP) as s:
        for first in range(0, N_ROWS, 23):
            m = min(23, N_ROWS - first)
            s.append(row_codes(range(first, first + m)), windows_for(first, m, first % 2 == 0),
                     tag="batch-46" if first == 46 else None)
        s.forget("rec-00003.wav")
    return path


QUERIES = row_codes([0, 17, 150, 299, 1000])


def _answers(store) -> tuple:
    """Everything a user sees: counts, hits with metadata, filtered hits, tags."""
    def hits(**f):
        return [[(h.distance, h.row, h.recording, round(h.offset_s, 6),
                  round(h.capture_utc, 6), h.clock_source) for h in hs]
                for hs in store.search(QUERIES, 6, **f)]
    st = store.stats()
    return (len(store), store.durable_rows, st["segments"], st["recordings"], st["stations"],
            st["first_capture_utc"], st["last_capture_end_utc"], hits(),
            hits(since=BASE + 400.0, until=BASE + 1100.0), hits(station="st1"),
            store.has_tag("batch-46"), store.has_recording("rec-00005.wav", "h5"),
            sorted(r.path for r in store.recordings()))


def _ask(path):
    with CodeStore.open(path) as s:
        return _answers(s)


def _windows_right(path) -> int:
    """Every window in the store is the reference's window of that row; return count."""
    with CodeStore.open(path) as s:
        n = 0
        for seg, codes in s.iter_segments():
            rows = np.arange(seg.first_row, seg.first_row + seg.n_rows)
            # the reference row of each window: from its recording and offset
            i = int(seg.recording.path[4:9])
            ref = i * PER_REC + np.round((seg.first_offset_s + np.arange(seg.n_rows)
                                          * seg.hop_s) / HOP).astype(int)
            np.testing.assert_array_equal(codes, row_codes(ref))
            assert seg.recording == recording_of(int(ref[0]))
            caps = seg.capture_start_utc + np.arange(seg.n_rows) * seg.hop_s
            np.testing.assert_allclose(caps, BASE + HOP * ref, atol=1e-4)
            n += len(rows)
        return n


def _cases(src):
    rng = np.random.default_rng(16)
    out = []
    for p in sorted(src.iterdir()):
        if p.name == "writer.lock":
            continue
        size = p.stat().st_size
        out.append((p.name, "delete", 0))
        if size == 0:
            continue
        flips = sorted({*np.linspace(0, size - 1, 40).astype(int).tolist(),
                        *rng.integers(0, size, 20).tolist()})
        out += [(p.name, "flip", int(x)) for x in flips]
        cuts = sorted({0, 1, size // 2, size - 1,
                       *rng.integers(0, size, 10).tolist()})
        out += [(p.name, "cut", int(x)) for x in cuts]
    return out


def _damage(d, name, kind, pos):
    path = d / name
    if kind == "delete":
        path.unlink()
    elif kind == "cut":
        os.truncate(path, pos)
    else:
        with open(path, "r+b") as f:
            f.seek(pos)
            b = f.read(1)[0]
            f.seek(pos)
            f.write(bytes([b ^ (1 << (pos % 8))]))


def test_every_damage_is_refused_or_harmless_and_repair_keeps_the_rest(tmp_path):
    src = _build(tmp_path / "src")
    reference = _ask(src)
    counts = Counter()
    lost = 0
    silent = []
    for name, kind, pos in _cases(src):
        d = tmp_path / "case"
        shutil.copytree(src, d)
        _damage(d, name, kind, pos)
        counts["cases"] += 1
        try:
            answer = _ask(d)
        except StoreError as e:
            assert str(d) in str(e), f"{name} {kind}@{pos}: message names no store: {e}"
            counts["refused"] += 1
            answer = None
        if answer is not None:
            if answer != reference:
                silent.append(f"{name} {kind}@{pos}")
            counts["same"] += 1
        if answer is None or not diagnose(d).clean:
            try:
                report = repair(d)
            except StoreError as e:
                assert str(d) in str(e) or "backup" in str(e), e
                counts["unrepairable"] += 1
            else:
                counts["repaired"] += 1
                lost += report.lost_windows
                assert diagnose(d).clean, f"{name} {kind}@{pos}: repair left damage"
                kept = _windows_right(d)
                assert kept == report.windows
                counts["windows_kept"] += kept
        shutil.rmtree(d)
        for b in tmp_path.glob("case.backup-*"):
            shutil.rmtree(b)
    counts["windows_lost"] = lost
    print(f"\ncorruption suite: {dict(counts)}; silent differences: {len(silent)}")
    assert not silent, f"silent differences: {silent}"
    assert counts["refused"] > 0 and counts["same"] > 0


@pytest.mark.parametrize("kind", ["flip", "cut", "delete"])
def test_refusals_name_commands_not_python(tmp_path, kind):
    src = _build(tmp_path / "src")
    _damage(src, "codes-000000.bin", kind, 128 + 8 * 100 + 3 if kind == "flip" else 900)
    with pytest.raises(StoreError) as e:
        _ask(src)
    assert "cvahash repair --db" in str(e.value) and "CodeStore" not in str(e.value)

"""Shared helpers for the code store tests: rows whose content is a function of their number.

Row r holds ``row_codes([r])`` and belongs to recording ``r // PER_REC`` at offset
``HOP * (r % PER_REC)``, captured at ``BASE + HOP * r``, so any row read back can be
checked on its own: a torn, shifted or mislabelled row shows up as a mismatch.
"""

from __future__ import annotations

import numpy as np

from cvahash.store.code_store import Recording, Segment, Window

BASE = 1_700_000_000.0
HOP = 5.0
PER_REC = 37
BITS = 64
FP = "f00dfeed" * 8


def row_codes(rows, nbytes: int = BITS // 8) -> np.ndarray:
    """splitmix64 of each row number, big-endian bytes, cut to nbytes."""
    z = np.asarray(rows, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    b = z.astype(">u8").view(np.uint8).reshape(-1, 8)
    reps = -(-nbytes // 8)
    return np.ascontiguousarray(np.tile(b, (1, reps))[:, :nbytes])


def recording_of(r: int) -> Recording:
    i = r // PER_REC
    return Recording(path=f"rec-{i:05d}.wav", station=f"st{i % 3}",
                     start_utc=BASE + HOP * PER_REC * i, sample_rate=48000,
                     duration_s=HOP * PER_REC, content_hash=f"h{i}")


def windows_for(first: int, n: int, per_window: bool):
    """Metadata of rows [first, first+n): Windows, or Segments split at recordings."""
    if per_window:
        return [Window(recording=recording_of(r), offset_s=HOP * (r % PER_REC), length_s=10.0,
                       capture_utc=BASE + HOP * r, clock_source="gps")
                for r in range(first, first + n)]
    segs, r = [], first
    while r < first + n:
        end = min(first + n, (r // PER_REC + 1) * PER_REC)
        segs.append(Segment(recording=recording_of(r), first_offset_s=HOP * (r % PER_REC),
                            length_s=10.0, capture_start_utc=BASE + HOP * r, hop_s=HOP,
                            n_rows=end - r, clock_source="gps"))
        r = end
    return segs


def check_rows(store, rows=None) -> None:
    """Every given (default: every committed) row's code and metadata are as written."""
    n = store.durable_rows
    rows = np.arange(n) if rows is None else np.asarray(rows)
    if len(rows) == 0:
        return
    codes, windows = store.read(rows)
    np.testing.assert_array_equal(codes, row_codes(rows, store.nbytes))
    for r, w in zip(rows.tolist(), windows, strict=True):
        assert w.row == r
        assert w.recording == recording_of(r)
        assert abs(w.offset_s - HOP * (r % PER_REC)) < 1e-4
        assert abs(w.capture_utc - (BASE + HOP * r)) < 1e-4
        assert w.length_s == 10.0 and w.clock_source == "gps"

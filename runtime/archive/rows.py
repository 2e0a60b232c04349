"""An update's rows as the archive's columns (numpy arrays, then Arrow tables for the
engine): station and clock names as dictionaries, codes as 64-bit words."""

from __future__ import annotations

from typing import Any

import numpy as np

from .schema import code_words, recording_id, words_for


def update_columns(update, batch: int) -> dict[str, Any]:
    recs = update.recordings
    rec_ids = np.array([recording_id(r["station"], r["path"], r["content_hash"]) for r in recs],
                       np.uint64)
    names = sorted({r["station"] for r in recs})
    station_of = np.array([names.index(r["station"]) for r in recs] if len(names) < 64 else
                          [{n: i for i, n in enumerate(names)}[r["station"]] for r in recs],
                          np.int32)
    idx = update.rows["recording"]
    capture = update.rows["capture_utc"]
    offset = update.rows["offset_s"]
    return {
        "station_idx": station_of[idx] if len(recs) else np.zeros(0, np.int32),
        "station_names": names,
        "capture_us": np.rint(capture * 1e6).astype(np.int64),
        "recording": rec_ids[idx] if len(recs) else np.zeros(0, np.uint64),
        "offset_us": np.rint(offset * 1e6).astype(np.int64),
        "length_s": update.rows["length_s"].astype(np.float64),
        "clock_idx": update.rows["clock"], "clock_names": list(update.clocks),
        "batch": np.full(update.count, batch, np.uint32),
        "seq": np.arange(update.count, dtype=np.uint32),
        "words": code_words(update.codes, update.bits),
    }


def code_rows_arrow(rows: dict[str, Any], bits: int):
    import pyarrow as pa  # optional: the [archive] extra (chDB's)

    def dictionary(indices, names):
        names = list(names)
        return pa.DictionaryArray.from_arrays(pa.array(np.asarray(indices, np.int32)),
                                              pa.array(names, pa.string()))

    data = {
        "station": dictionary(rows["station_idx"], rows["station_names"]),
        "capture": pa.array(rows["capture_us"], pa.int64()).cast(pa.timestamp("us", "UTC")),
        "recording": pa.array(rows["recording"], pa.uint64()),
        "offset_us": pa.array(rows["offset_us"], pa.int64()),
        "length_s": pa.array(rows["length_s"], pa.float64()),
        "clock": dictionary(rows["clock_idx"], rows["clock_names"]),
        "batch": pa.array(rows["batch"], pa.uint32()),
        "seq": pa.array(rows["seq"], pa.uint32()),
    }
    words = rows["words"]
    for i in range(words_for(bits)):
        data[f"c{i}"] = pa.array(np.ascontiguousarray(words[:, i]), pa.uint64())
    return pa.table(data)


def recordings_columns(update) -> dict[str, Any]:
    recs = update.recordings
    return {
        "id": np.array([recording_id(r["station"], r["path"], r["content_hash"]) for r in recs],
                       np.uint64),
        "station": [r["station"] for r in recs],
        "path": [r["path"] for r in recs],
        "content_hash": [r["content_hash"] for r in recs],
        "start_utc": [None if r["start_utc"] is None else float(r["start_utc"]) for r in recs],
        "sample_rate": [r["sample_rate"] for r in recs],
        "duration_s": [None if r["duration_s"] is None else float(r["duration_s"])
                       for r in recs],
    }


def arrow_table(columns: dict[str, Any]):
    import pyarrow as pa  # optional: the [archive] extra (chDB's)

    out = {}
    for name, value in columns.items():
        if name in ("added", "started", "ingested"):
            out[name] = pa.array(value, pa.timestamp("ms", "UTC"))
        elif name == "sample_rate":
            out[name] = pa.array(value, pa.uint32())
        elif name == "stations":
            out[name] = pa.array(value, pa.list_(pa.string()))
        else:
            out[name] = pa.array(value)
    return pa.table(out)

"""Applying journal records to the metadata database: the one way the store changes
its SQLite side, whether committing (``append``, ``forget``, ``compact``, recovery) or
rebuilding it from the journal (roll-forward on open, ``check``, ``repair``).

Because a commit and a replay run the same function on the same record, a database
rebuilt from the journal is the database the commits made (up to recording ids).
"""

from __future__ import annotations

import sqlite3
import zlib
from dataclasses import replace

from ..errors import CvahashError
from .journal import entry_segment
from .metadata import (
    SCHEMA,
    SCHEMA_VERSION,
    MetadataCorrupt,
    read_info,
    recording_crc,
    recording_fields,
    seal_info,
    segment_hashes,
)
from .records import Recording, Segment, try_extend


def _set(conn, **values) -> None:
    conn.executemany("UPDATE store_info SET value = ? WHERE key = ?",
                     [(v, k) for k, v in values.items()])


def _recording_ids(conn, recs: dict) -> dict:
    """Ids of these recordings ({key: Recording}), inserting the new ones."""
    ids: dict[tuple[str, str], int] = {}
    paths = sorted({path for path, _ in recs})
    for i in range(0, len(paths), 500):
        chunk = paths[i:i + 500]
        for rid, path, content_hash in conn.execute(
                "SELECT id, path, content_hash FROM recordings WHERE path IN "
                f"({','.join('?' * len(chunk))})", chunk):
            if (path, content_hash) in recs:
                ids[(path, content_hash)] = rid
    new = [rec for key, rec in recs.items() if key not in ids]
    if new:
        (top,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM recordings").fetchone()
        rows = []
        for rid, rec in enumerate(new, start=top + 1):
            fields = recording_fields(rec)
            rows.append((rid, *fields, recording_crc(rid, *fields)))
            ids[rec.key] = rid
        conn.executemany("INSERT INTO recordings (id, path, content_hash, station, "
                         "start_utc, sample_rate, duration_s, crc) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return ids


def _insert_segments(conn, segs: list[Segment]) -> float:
    """Insert (or replace, by first row) segments and their recordings; return the
    largest span (last - first capture time) among them."""
    if not segs:
        return 0.0
    recs: dict = {}
    for seg in segs:
        recs.setdefault(seg.recording.key, seg.recording)
    ids = _recording_ids(conn, recs)
    cols = list(zip(*[(g.first_row, g.n_rows, ids[g.recording.key], g.first_offset_s, g.hop_s,
                       g.length_s, g.capture_start_utc, g.clock_source) for g in segs],
                    strict=True))
    cols.append(segment_hashes(*cols).tolist())
    conn.executemany("INSERT OR REPLACE INTO segments VALUES (?,?,?,?,?,?,?,?,?)",
                     zip(*cols, strict=True))
    return max((g.n_rows - 1) * g.hop_s for g in segs)


def _tail(conn, committed: int) -> Segment | None:
    """The last segment if it ends at the last committed row (appends may extend it)."""
    row = conn.execute("SELECT s.first_row, s.n_rows, s.first_offset_s, s.hop_s, s.length_s, "
                       "s.capture_start_utc, s.clock_source, r.path, r.content_hash, r.station,"
                       " r.start_utc, r.sample_rate, r.duration_s FROM segments s JOIN "
                       "recordings r ON r.id = s.recording ORDER BY s.first_row DESC LIMIT 1"
                       ).fetchone()
    if row is None or row[0] + row[1] != committed:
        return None
    first, n, off0, hop, length, cap0, clock, path, content_hash, station, start, rate, \
        duration = row
    rec = Recording(path=path, station=station, start_utc=start, sample_rate=rate,
                    duration_s=duration, content_hash=content_hash)
    return Segment(recording=rec, first_offset_s=float(off0), length_s=float(length),
                   capture_start_utc=float(cap0), hop_s=float(hop), n_rows=n,
                   clock_source=clock, first_row=first)


def merge_segments(last: Segment | None, segs: list[Segment]) -> list[Segment]:
    """Consecutive segments as the store keeps them: each joins the one before when it
    continues its grid (the first may extend ``last``, the committed tail)."""
    merged: list[Segment] = []
    for seg in segs:
        prev = merged[-1] if merged else last
        grown = None if prev is None else try_extend(prev, seg)
        if grown is None:
            merged.append(seg)
        elif merged:
            merged[-1] = grown
        else:
            merged.append(grown)
    return merged


def tags_crc(conn: sqlite3.Connection) -> int:
    """CRC32 over every tags row (kept in store_info, checked when a tag is not found, so
    that a lost or altered tags row cannot make a batch look unapplied)."""
    rows = sorted(conn.execute("SELECT tag, applied_utc, first_row, n_rows FROM tags"),
                  key=repr)
    return zlib.crc32(repr(rows).encode("utf-8", "surrogatepass"))


def retire(segs: list[Segment], tags: list, bad) -> tuple[list, list, dict]:
    """What stays searchable when the rows ``bad`` (a boolean mask) are lost.

    A recording with a lost window is retired whole, so that indexing its file again
    re-does it without duplicates; a tagged batch (an update) with a lost or retired
    window is forgotten with every recording in it, so that applying it again restores
    it. Returns (kept segments, kept tags, {retired recording key: windows})."""
    hit = {s.recording.key for s in segs if bad[s.first_row:s.first_row + s.n_rows].any()}
    tags = list(tags)
    while True:
        dropped = [t for t in tags if t[2] is not None and (
            bad[t[2]:t[2] + t[3]].any() or any(
                s.recording.key in hit for s in segs
                if s.first_row < t[2] + t[3] and s.first_row + s.n_rows > t[2]))]
        if not dropped:
            break
        for t in dropped:
            hit |= {s.recording.key for s in segs
                    if s.first_row < t[2] + t[3] and s.first_row + s.n_rows > t[2]}
        tags = [t for t in tags if t not in dropped]
    retired: dict = {}
    for s in segs:
        if s.recording.key in hit:
            retired[s.recording.key] = retired.get(s.recording.key, 0) + s.n_rows
    return [s for s in segs if s.recording.key not in hit], tags, retired


def decode_segments(entries) -> list[Segment]:
    try:
        return [entry_segment(e) for e in entries]
    except (ValueError, TypeError, CvahashError) as e:
        raise MetadataCorrupt(f"a journal record holds a bad segment ({e})") from None


def apply_record(conn: sqlite3.Connection, record: dict) -> None:
    """Apply one journal record to the metadata, inside the caller's write transaction."""
    info = read_info(conn)
    committed, forgotten = info["committed_rows"], info["forgotten_rows"]
    kind = record["kind"]
    layout = False
    if kind == "base":
        conn.execute("DELETE FROM segments")
        conn.execute("DELETE FROM recordings")
        conn.execute("DELETE FROM tags")
        segs = decode_segments(record.get("segs", []))
        _insert_segments(conn, segs)
        conn.executemany("INSERT INTO tags VALUES (?, ?, ?, ?)",
                         [tuple(t) for t in record.get("tags", [])])
        _set(conn, generation=record["generation"], max_span_s=record["max_span_s"])
        layout = True
    elif kind == "append":
        first, n = record["first"], record["n"]
        if not isinstance(first, int) or not isinstance(n, int) or first < committed \
                or record["rows"] != first + n:
            raise MetadataCorrupt(f"a journal record adds rows from {first!r} but "
                                  f"{committed} rows are committed")
        segs = decode_segments(record.get("segs", []))
        row = first
        for seg in segs:
            if seg.first_row != row:
                raise MetadataCorrupt(f"a journal record's segments skip row {row}")
            row += seg.n_rows
        if row != first + n:
            raise MetadataCorrupt(f"a journal record's segments describe {row - first} of "
                                  f"its {n} rows")
        merged = merge_segments(_tail(conn, committed) if first == committed else None, segs)
        span = _insert_segments(conn, merged)
        if span > info["max_span_s"]:
            _set(conn, max_span_s=span)
        tag = record.get("tag")
        if tag is not None:
            name, applied, tag_first = tag
            conn.execute("INSERT INTO tags VALUES (?, ?, ?, ?)",
                         (name, applied, tag_first, first + n - tag_first))
        layout = first > committed      # rows of a lost record: never searched
    elif kind == "forget":
        layout = True
        for path, content_hash in record["forget"]:
            if content_hash is None:
                ids = [r for (r,) in conn.execute("SELECT id FROM recordings WHERE path = ?",
                                                  (path,))]
            else:
                ids = [r for (r,) in conn.execute(
                    "SELECT id FROM recordings WHERE path = ? AND content_hash = ?",
                    (path, content_hash))]
            marks = ",".join("?" * len(ids))
            conn.execute(f"DELETE FROM segments WHERE recording IN ({marks})", ids)
            conn.execute(f"DELETE FROM recordings WHERE id IN ({marks})", ids)
    (live,) = conn.execute("SELECT COALESCE(SUM(n_rows), 0) FROM segments").fetchone()
    if live + record["forgotten"] != record["rows"]:
        raise MetadataCorrupt(f"replaying journal version {record['v']} leaves {live} live "
                              f"rows and {record['forgotten']} forgotten, not "
                              f"{record['rows']} committed")
    del forgotten
    _set(conn, committed_rows=record["rows"], forgotten_rows=record["forgotten"],
         version=record["v"])
    if kind == "base" or record.get("tag") is not None:
        conn.execute("INSERT OR REPLACE INTO store_info VALUES ('tags_crc', ?)",
                     (tags_crc(conn),))
    if layout:
        conn.execute("UPDATE store_info SET value = value + 1 WHERE key = 'layout'")


def new_database(conn: sqlite3.Connection, base: dict, store_id_hex: str, bits: int,
                 fingerprint: str, created_utc: float) -> None:
    """Schema and store_info of a store whose state is the ``base`` record (no commit)."""
    conn.executescript(SCHEMA)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO store_info VALUES (?, ?)", [
        ("schema_version", SCHEMA_VERSION), ("store_id", store_id_hex),
        ("bits", int(bits)), ("fingerprint", fingerprint), ("generation", 0),
        ("committed_rows", 0), ("forgotten_rows", 0), ("max_span_s", 0.0),
        ("version", 0), ("layout", 0), ("created_utc", created_utc), ("journal", 1)])
    apply_record(conn, base)
    seal_info(conn)
    conn.execute("COMMIT")


def state_of(conn: sqlite3.Connection) -> dict:
    """The content of a metadata database, independent of recording ids: for comparing
    a database with the one its journal rebuilds."""
    segs = conn.execute(
        "SELECT s.first_row, s.n_rows, r.path, r.content_hash, r.station, r.start_utc, "
        "r.sample_rate, r.duration_s, s.first_offset_s, s.hop_s, s.length_s, "
        "s.capture_start_utc, s.clock_source FROM segments s LEFT JOIN recordings r ON "
        "r.id = s.recording ORDER BY s.first_row").fetchall()
    recs = sorted(conn.execute("SELECT path, content_hash, station, start_utc, sample_rate, "
                               "duration_s FROM recordings").fetchall(), key=repr)
    tags = sorted(conn.execute("SELECT tag, first_row, n_rows FROM tags").fetchall(),
                  key=repr)
    info = read_info(conn)
    return {"segments": segs, "recordings": recs, "tags": tags,
            **{k: info.get(k) for k in ("committed_rows", "forgotten_rows", "generation",
                                        "version")}}


def replace_first(seg: Segment, first_row: int) -> Segment:
    return replace(seg, first_row=first_row)

"""The network archive's tables: their DDL, the code columns, and the ids of recordings and
windows.

Schema (see docs/archive.md for the reasons and the cluster DDL). One code table per
bundle fingerprint, so codes of two bundles are never compared::

    codes_<16 hex of sha256(fingerprint)>
        station   LowCardinality(String)
        capture   DateTime64(6, 'UTC')  CODEC(Delta, LZ4)       window's capture start
        recording UInt64                CODEC(LZ4)              id of (station, path, hash)
        offset_us Int64                 CODEC(Delta, LZ4)       start into the recording
        length_s  Float64               CODEC(LZ4)
        clock     LowCardinality(String)
        batch     UInt32                CODEC(T64, LZ4)         the ingest that brought it
        seq       UInt32                CODEC(Delta, LZ4)       its position in that update
        c0 .. cW  UInt64                CODEC(NONE)             the code, 64 bits a column
    ENGINE MergeTree PARTITION BY toYYYYMM(capture)
    ORDER BY (station, capture, recording, offset_us)

plus ``bundles`` (fingerprint -> bits, table), ``recordings`` (id -> path, station,
content hash, start, rate, duration), ``ingests`` (the ledger: one row per update
ingested, written last) and ``starts`` / ``aborts`` (ingests begun / cleaned up).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from ..kernel.codes import code_rows

SCHEMA_VERSION = 1
CODE_CODEC = "NONE"  # measured in bench/archive_bench.py: LZ4/ZSTD save nothing on codes
_ROW_ID_MASK = (1 << 53) - 1  # window ids stay exact in JSON readers (JavaScript numbers)

BASE_DDL = [
    """CREATE TABLE IF NOT EXISTS archive_info (key String, value String)
       ENGINE = ReplacingMergeTree ORDER BY key""",
    """CREATE TABLE IF NOT EXISTS bundles (fingerprint String, bits UInt16, code_table String,
       added DateTime64(3, 'UTC')) ENGINE = ReplacingMergeTree ORDER BY fingerprint""",
    """CREATE TABLE IF NOT EXISTS recordings (id UInt64, station String, path String,
       content_hash String, start_utc Nullable(Float64), sample_rate Nullable(UInt32),
       duration_s Nullable(Float64)) ENGINE = ReplacingMergeTree ORDER BY id""",
    """CREATE TABLE IF NOT EXISTS starts (batch UInt32, update_id String,
       started DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY batch""",
    """CREATE TABLE IF NOT EXISTS aborts (batch UInt32) ENGINE = MergeTree ORDER BY batch""",
    """CREATE TABLE IF NOT EXISTS ingests (batch UInt32, update_id String, fingerprint String,
       bits UInt16, file String, key_id String, created String, stations Array(String),
       rows_in_file UInt64, rows_added UInt64, first_capture Nullable(Float64),
       last_capture Nullable(Float64), ingested DateTime64(3, 'UTC'))
       ENGINE = MergeTree ORDER BY batch""",
]


def code_table(fingerprint: str) -> str:
    """The code table of a bundle: a name made of hex digits only (never user text)."""
    return "codes_" + hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


def code_table_ddl(table: str, bits: int, codec: str = CODE_CODEC, engine: str = "MergeTree",
                   partition: bool = True) -> str:
    words = ",\n    ".join(f"c{i} UInt64 CODEC({codec})" for i in range(words_for(bits)))
    return (f"CREATE TABLE IF NOT EXISTS {table} (\n"
            "    station LowCardinality(String),\n"
            "    capture DateTime64(6, 'UTC') CODEC(Delta, LZ4),\n"
            "    recording UInt64 CODEC(LZ4),\n"
            "    offset_us Int64 CODEC(Delta, LZ4),\n"
            "    length_s Float64 CODEC(LZ4),\n"
            "    clock LowCardinality(String),\n"
            "    batch UInt32 CODEC(T64, LZ4),\n"
            "    seq UInt32 CODEC(Delta, LZ4),\n"
            f"    {words}\n) ENGINE = {engine}\n"
            + ("PARTITION BY toYYYYMM(capture)\n" if partition else "")
            + "ORDER BY (station, capture, recording, offset_us)")


def words_for(bits: int) -> int:
    return (int(bits) + 63) // 64


def code_words(codes: np.ndarray, bits: int) -> np.ndarray:
    """Packed uint8 codes (n, ceil(bits/8)) as uint64 words (n, ceil(bits/64)): big-endian
    8-byte groups, zero-padded. Hamming distance is the sum of popcount(xor) per word."""
    nbytes = (bits + 7) // 8
    codes = code_rows(codes, nbytes, "codes are {got} bytes wide, this archive's codes of "
                      f"{bits} bits are {{want}}; both must come from the same model")
    width = words_for(bits) * 8
    if width != nbytes:
        padded = np.zeros((codes.shape[0], width), np.uint8)
        padded[:, :nbytes] = codes
        codes = padded
    return np.ascontiguousarray(codes).view(">u8").astype(np.uint64)


def recording_id(station: str, path: str, content_hash: str) -> int:
    digest = hashlib.blake2b(f"{station}\0{path}\0{content_hash}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big")


def window_id(recording: int, offset_us: int) -> int:
    """A stable id of one archived window (the ``row`` of a hit), below 2**53."""
    digest = hashlib.blake2b(f"{recording}:{offset_us}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & _ROW_ID_MASK


def iso_micros(us: int | None) -> str | None:
    """Microseconds since the epoch as ISO-8601 UTC text (None stays None)."""
    if us is None:
        return None
    return datetime.fromtimestamp(us / 1e6, timezone.utc).isoformat().replace("+00:00", "Z")


def micros(seconds: float) -> int:
    """Seconds as whole microseconds (the archive's offsets and times)."""
    return int(round(seconds * 1e6))


@dataclass(frozen=True)
class Bundle:
    fingerprint: str
    bits: int
    table: str

"""The SD-card update file (``.cvaup``): layout, signing keys, writer, and a hostile-input reader.

An update file comes from an SD card, so the reader treats every byte as hostile: it
checks the fixed prefix, verifies the Ed25519 signature *before* it parses the header,
bounds every declared length before it allocates anything, verifies the body checksum
*before* it parses the body, and refuses recording paths that are absolute or climb out
of their folder. Any problem raises `UpdateRejected` with ``reason`` (a short code,
stable for scripts and tests) and a message that says what is wrong and what to do;
no other exception escapes `read_update`, whatever the bytes.

Layout (all integers big-endian)::

    offset  size  field
    0       8     magic  b"\\x89CVAUP\\r\\n"   (catches text-mode copies, like PNG's)
    8       2     format version (1)
    10      8     key id: first 8 bytes of sha256(raw Ed25519 public key)
    18      4     header length H, at most MAX_HEADER_BYTES
    22      H     header: UTF-8 JSON object (see `_check_header`)
    22+H    64    Ed25519 signature over bytes [0, 22+H): prefix and header
    86+H    ...   body: codes | rows | tables, lengths declared in header["sections"]

The header carries ``body_sha256``, so the signature covers the body too. The body:

* ``codes``: ``rows x ceil(bits/8)`` bytes, packed MSB-first (numpy.packbits), row-major.
* ``rows``: ``rows x 30`` bytes, `ROW_DTYPE` little-endian records: the row's recording
  (index into ``tables["recordings"]``), its clock source (index into
  ``tables["clocks"]``), the window's offset into the recording and its length in
  seconds, and its capture time (UTC seconds since the epoch).
* ``tables``: UTF-8 JSON ``{"recordings": [{"path", "station", "content_hash",
  "start_utc", "sample_rate", "duration_s"}, ...], "clocks": ["gps", ...]}``; a path is
  relative (to the source station's audio folder) and never absolute or with ``..``,
  ``station`` names the station that recorded it.

The update id is derived from the content (fingerprint, bits, body checksum), so two
builds of the same codes carry the same id and applying either twice changes nothing.

Keys live in `cvahash.update.keys` and are re-exported here.

Why one long module: the layout, the writer and the hostile-input reader with its
checks of every field describe one file format and must change together.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from ..errors import FingerprintMismatch, UpdateRejected
from ..limits import CLOCK_SOURCE_RE, EARLIEST_UTC, LATEST_UTC, MAX_CODE_BITS
from ..limits import is_int as _is_int

# The keys are re-exported: reading and writing updates and their keys are one API.
from .keys import PUBLIC_KEY_TAG as PUBLIC_KEY_TAG
from .keys import TrustedKey as TrustedKey
from .keys import generate_keypair as generate_keypair
from .keys import key_id_of as key_id_of
from .keys import load_private_key as load_private_key
from .keys import load_public_key as load_public_key
from .keys import trust as trust

MAGIC = b"\x89CVAUP\r\n"
FORMAT_VERSION = 1
PREFIX = struct.Struct(">8sH8sI")
SIGNATURE_BYTES = 64
MAX_HEADER_BYTES = 64 * 1024
MAX_TABLES_BYTES = 256 * 1024 * 1024
MAX_ROWS = 2**32 - 1
MAX_BITS = MAX_CODE_BITS
MAX_PATH_CHARS = 1024
MAX_RECORDINGS = 10_000_000
ROW_DTYPE = np.dtype([("recording", "<u4"), ("clock", "<u2"), ("offset_s", "<f8"),
                      ("length_s", "<f8"), ("capture_utc", "<f8")])
assert ROW_DTYPE.itemsize == 30  # packed: part of the file format
MAX_CLOCKS = 256
_CLOCK = CLOCK_SOURCE_RE
_CONTENT_HASH = re.compile(r"^[A-Za-z0-9:_.+/=-]{0,128}$")
_RECORDING_KEYS = {"path", "station", "content_hash", "start_utc", "sample_rate", "duration_s"}
SUFFIX = ".cvaup"
_CHUNK = 1 << 20


class UpdateForOtherBundle(UpdateRejected, FingerprintMismatch):
    """The update's codes come from another model bundle or bit width than the store's."""


def _reject(reason: str, message: str, cls: type[UpdateRejected] = UpdateRejected):
    exc = cls(message)
    exc.reason = reason
    return exc


# ---------------------------------------------------------------------------------------
# The parsed update


@dataclass
class UpdatePackage:
    """A verified update: every field checked, every array bounded and consistent."""
    update_id: str
    created: str
    fingerprint: str
    bits: int
    since: str | None
    source: dict[str, str]
    key_id: str
    codes: np.ndarray        # uint8 [rows, ceil(bits/8)]
    rows: np.ndarray         # ROW_DTYPE [rows]
    recordings: list[dict[str, Any]] = field(default_factory=list)
    clocks: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return int(self.codes.shape[0])

    def check_target(self, fingerprint: str, bits: int) -> None:
        """Raise UpdateForOtherBundle unless this update fits a store of ``fingerprint``
        and ``bits``: codes of two bundles must never mix in one store."""
        if self.fingerprint != fingerprint or self.bits != bits:
            raise _reject("other-bundle", (
                f"this update was made for bundle {self.fingerprint} ({self.bits} bits), "
                f"this store holds codes of bundle {fingerprint} ({bits} bits): re-index "
                "with the new bundle into a new store (cvahash index ... --db NEW_DIR) or "
                "keep one store per bundle"), UpdateForOtherBundle)


# ---------------------------------------------------------------------------------------
# Writing


def update_id_for(fingerprint: str, bits: int, body_sha256: str) -> str:
    """The content-derived update id: equal content, equal id (so apply is idempotent)."""
    return hashlib.sha256(f"{fingerprint}\n{bits}\n{body_sha256}".encode()).hexdigest()[:32]


def pack_update(*, private_key, fingerprint: str, bits: int, codes: np.ndarray,
                rows: np.ndarray, recordings: list[dict[str, Any]], clocks: list[str],
                created: str, since: str | None = None,
                source: dict[str, str] | None = None) -> bytes:
    """The bytes of a signed update. Inputs are checked with the same rules as the reader,
    so a workstation can never write a file a station would refuse."""
    nbytes = (int(bits) + 7) // 8
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    rows = np.ascontiguousarray(rows, dtype=ROW_DTYPE)
    if codes.ndim != 2 or codes.shape[1] != nbytes or rows.shape != (codes.shape[0],):
        raise ValueError(f"codes must be uint8 [n, {nbytes}] and rows ROW_DTYPE [n]; got "
                         f"{codes.shape} and {rows.shape}")
    tables = json.dumps({"recordings": recordings, "clocks": clocks}, separators=(",", ":"),
                        ensure_ascii=False, allow_nan=False).encode()
    body = codes.tobytes() + rows.tobytes() + tables
    body_sha = hashlib.sha256(body).hexdigest()
    header = {
        "update_id": update_id_for(fingerprint, bits, body_sha),
        "created": created, "fingerprint": fingerprint, "bits": int(bits),
        "rows": int(codes.shape[0]), "since": since, "source": dict(source or {}),
        "sections": {"codes": codes.nbytes, "rows": rows.nbytes, "tables": len(tables)},
        "body_sha256": body_sha,
    }
    _check_header(header)
    _check_tables(json.loads(tables), codes.shape[0])
    _check_rows(rows, len(recordings), len(clocks))
    return sign_raw(private_key, json.dumps(header, sort_keys=True).encode(), body)


def sign_raw(private_key, header_bytes: bytes, body: bytes) -> bytes:
    """Frame and sign ``header_bytes`` + ``body`` as they are, without checking them.
    For `pack_update`, and for tests that need hostile content under a valid signature."""
    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)
    signed = PREFIX.pack(MAGIC, FORMAT_VERSION, key_id_of(raw), len(header_bytes)) + header_bytes
    return signed + private_key.sign(signed) + body


def write_update(path: str | Path, data: bytes) -> Path:
    """Write update bytes to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------
# Reading


def read_update(source: str | Path | bytes | BinaryIO, trusted: list[TrustedKey]) -> UpdatePackage:
    """Verify and parse an update file. Raises only UpdateRejected (with ``.reason``).

    ``source`` is a path, the file's bytes, or a binary file object opened for reading.
    Nothing is allocated beyond the file's real size, and nothing is parsed before the
    signature (header) and checksum (body) that protect it have been verified.
    """
    name = str(source) if isinstance(source, (str, Path)) else "update"
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return _read(io.BytesIO(bytes(source)), name, trusted)
        if isinstance(source, (str, Path)):
            with open(source, "rb") as f:
                return _read(f, name, trusted)
        return _read(source, name, trusted)
    except UpdateRejected:
        raise
    except OSError as exc:
        raise _reject("unreadable", f"{name}: cannot read the update file: "
                      f"{exc.strerror or exc}; copy it from the card again") from None
    except MemoryError:
        raise _reject("too-large", f"{name}: not enough memory to verify this update; "
                      "split it into smaller ones (cvahash update build --since ...)") from None


def _read(f: BinaryIO, name: str, trusted: list[TrustedKey]) -> UpdatePackage:
    size = f.seek(0, io.SEEK_END)
    f.seek(0)

    def read_exact(n: int, what: str) -> bytes:
        data = f.read(n)
        if len(data) != n:
            raise _reject("truncated", f"{name}: the file ends inside the {what}; it was cut "
                          "short (copy it from the card again)")
        return data

    head = f.read(PREFIX.size)
    if not head.startswith(MAGIC[:len(head)]) or len(head) < len(MAGIC):
        if head.startswith(MAGIC[:len(head)]):
            raise _reject("truncated", f"{name}: the file is too short to be an update")
        raise _reject("not-an-update", f"{name}: not a cvahash update file (wrong magic "
                      "bytes); updates are made with: cvahash update build")
    if len(head) < PREFIX.size:
        raise _reject("truncated", f"{name}: the file ends inside the fixed header")
    _, version, key_id, header_len = PREFIX.unpack(head)
    if version != FORMAT_VERSION:
        raise _reject("unknown-version", f"{name}: update format version {version}, this "
                      f"cvahash reads version {FORMAT_VERSION}; update cvahash on the station")
    if header_len > MAX_HEADER_BYTES:
        raise _reject("too-large", f"{name}: declares a {header_len}-byte header, more than "
                      f"the {MAX_HEADER_BYTES} allowed; the file is damaged or not genuine")
    if size < PREFIX.size + header_len + SIGNATURE_BYTES:
        raise _reject("truncated", f"{name}: {size} bytes, too short for its declared "
                      f"{header_len}-byte header and signature; it was cut short")
    header_bytes = read_exact(header_len, "header")
    signature = read_exact(SIGNATURE_BYTES, "signature")

    key = next((k for k in trusted if k.key_id == key_id), None)
    if key is None:
        known = ", ".join(k.key_id_hex for k in trusted) or "none"
        raise _reject("unknown-key", f"{name}: signed by key {key_id.hex()}, which this "
                      f"station does not trust (trusted: {known}); pass the signer's "
                      "KEY.pub with --trust if you trust it")
    try:
        key.public_key.verify(signature, head + header_bytes)
    except InvalidSignature:
        raise _reject("bad-signature", f"{name}: the signature does not match: the file "
                      f"was changed after signing, or damaged (key {key_id.hex()})") from None

    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _reject("bad-header", f"{name}: the signed header is not valid JSON") from None
    _check_header(header, name)
    sections = header["sections"]
    body_len = sections["codes"] + sections["rows"] + sections["tables"]
    expected = PREFIX.size + header_len + SIGNATURE_BYTES + body_len
    if size != expected:
        what = "cut short" if size < expected else "has extra bytes at the end"
        raise _reject("truncated" if size < expected else "trailing-bytes",
                      f"{name}: {size} bytes, but its header declares {expected}: the file "
                      f"{what}; copy it from the card again")

    digest = hashlib.sha256()
    codes = _read_hashed(f, sections["codes"], digest, name)
    rows = _read_hashed(f, sections["rows"], digest, name)
    tables_raw = _read_hashed(f, sections["tables"], digest, name)
    if digest.hexdigest() != header["body_sha256"]:
        raise _reject("bad-checksum", f"{name}: the body's sha256 does not match the signed "
                      "header: the codes or metadata were damaged or altered; copy the file "
                      "from the card again")

    try:
        tables = json.loads(tables_raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _reject("bad-tables", f"{name}: the metadata tables are not valid JSON") from None
    recordings, clocks = _check_tables(tables, header["rows"], name)
    nbytes = (header["bits"] + 7) // 8
    rows_arr = rows.view(ROW_DTYPE)
    _check_rows(rows_arr, len(recordings), len(clocks), name)
    return UpdatePackage(
        update_id=header["update_id"], created=header["created"],
        fingerprint=header["fingerprint"], bits=header["bits"], since=header["since"],
        source=header["source"], key_id=key_id.hex(),
        codes=codes.reshape(header["rows"], nbytes), rows=rows_arr, recordings=recordings,
        clocks=clocks)


def _read_hashed(f: BinaryIO, length: int, digest, name: str) -> np.ndarray:
    """Read exactly ``length`` bytes (already checked against the file size) into a new
    array, feeding them to ``digest`` as they come."""
    out = np.empty(length, dtype=np.uint8)
    view = memoryview(out)
    done = 0
    while done < length:
        n = f.readinto(view[done:done + _CHUNK])
        if not n:
            raise _reject("truncated", f"{name}: the file ended early while reading; it "
                          "changed or was cut short during the read")
        digest.update(view[done:done + n])
        done += n
    return out


# ---------------------------------------------------------------------------------------
# Field checks, shared by the writer and the reader

_HEADER_KEYS = {"update_id", "created", "fingerprint", "bits", "rows", "since", "source",
                "sections", "body_sha256"}
_FINGERPRINT = re.compile(r"^[A-Za-z0-9:._+-]{1,128}$")


def _check_header(header: Any, name: str = "update") -> None:
    def bad(message: str):
        return _reject("bad-header", f"{name}: signed header: {message}")

    if not isinstance(header, dict):
        raise bad("expected a JSON object")
    if set(header) != _HEADER_KEYS:
        missing, extra = _HEADER_KEYS - set(header), set(header) - _HEADER_KEYS
        raise bad(f"missing {sorted(missing)}, unknown {sorted(extra)}")
    if not (isinstance(header["update_id"], str) and re.fullmatch(r"[0-9a-f]{32}",
                                                                   header["update_id"])):
        raise bad("update_id: expected 32 lowercase hex digits")
    for key in ("created", "since"):
        value = header[key]
        if value is None and key == "since":
            continue
        if not isinstance(value, str) or len(value) > 64 or not _is_iso_time(value):
            raise bad(f"{key}: expected an ISO 8601 time")
    if not isinstance(header["fingerprint"], str) or not _FINGERPRINT.match(
            header["fingerprint"]):
        raise bad("fingerprint: expected 1-128 characters of [A-Za-z0-9:._+-]")
    bits, rows = header["bits"], header["rows"]
    if not _is_int(bits) or not 1 <= bits <= MAX_BITS:
        raise bad(f"bits: expected an integer from 1 to {MAX_BITS}")
    if not _is_int(rows) or not 0 <= rows <= MAX_ROWS:
        raise bad(f"rows: expected an integer from 0 to {MAX_ROWS}")
    source = header["source"]
    if (not isinstance(source, dict) or len(source) > 32
            or not all(isinstance(k, str) and isinstance(v, str) and len(k) <= 64
                       and len(v) <= 1024 for k, v in source.items())):
        raise bad("source: expected at most 32 short text fields")
    sections = header["sections"]
    if not isinstance(sections, dict) or set(sections) != {"codes", "rows", "tables"} or \
            not all(_is_int(v) and v >= 0 for v in sections.values()):
        raise bad("sections: expected the byte lengths of codes, rows and tables")
    if sections["codes"] != rows * ((bits + 7) // 8):
        raise bad(f"sections: codes length {sections['codes']} does not match {rows} rows "
                  f"of {bits} bits")
    if sections["rows"] != rows * ROW_DTYPE.itemsize:
        raise bad(f"sections: rows length {sections['rows']} does not match {rows} rows")
    if sections["tables"] > MAX_TABLES_BYTES:
        raise _reject("too-large", f"{name}: metadata tables of {sections['tables']} bytes, "
                      f"more than the {MAX_TABLES_BYTES} allowed")
    if not (isinstance(header["body_sha256"], str)
            and re.fullmatch(r"[0-9a-f]{64}", header["body_sha256"])):
        raise bad("body_sha256: expected 64 lowercase hex digits")


def _is_iso_time(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def check_recording_path(path: Any) -> str:
    """Return ``path`` if it is a safe relative POSIX path, else raise ValueError saying why.

    Refused: non-strings, empty, over MAX_PATH_CHARS, control characters (NUL included),
    backslashes, absolute paths, drive letters, and empty, ``.`` or ``..`` components.
    """
    if not isinstance(path, str) or not path:
        raise ValueError("expected a non-empty string")
    if len(path) > MAX_PATH_CHARS:
        raise ValueError(f"longer than {MAX_PATH_CHARS} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise ValueError("contains control characters")
    if "\\" in path:
        raise ValueError("contains a backslash")
    if PurePosixPath(path).is_absolute() or re.match(r"^[A-Za-z]:", path):
        raise ValueError("is absolute")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError("has an empty, '.' or '..' component (path traversal)")
    return path


def _is_number(value: Any) -> bool:
    if _is_int(value):
        return abs(value) < 2**53  # huge JSON integers would overflow a float later
    return isinstance(value, float) and math.isfinite(value)


def _check_tables(tables: Any, nrows: int, name: str = "update"):
    """The recordings and clocks tables, each entry checked; returns both lists."""
    def bad(message: str):
        return _reject("bad-tables", f"{name}: metadata: {message}")

    if (not isinstance(tables, dict) or set(tables) != {"recordings", "clocks"}
            or not isinstance(tables["recordings"], list)
            or not isinstance(tables["clocks"], list)):
        raise bad('expected {"recordings": [...], "clocks": [...]}')
    recordings, clocks = tables["recordings"], tables["clocks"]
    if len(recordings) > MAX_RECORDINGS or len(clocks) > MAX_CLOCKS:
        raise bad(f"more than {MAX_RECORDINGS} recordings or {MAX_CLOCKS} clock sources")
    for i, clock in enumerate(clocks):
        if not isinstance(clock, str) or not _CLOCK.match(clock):
            raise bad(f"clock source {i}: expected a short lowercase word such as 'gps'")
    for i, rec in enumerate(recordings):
        if not isinstance(rec, dict) or set(rec) != _RECORDING_KEYS:
            raise bad(f"recording {i}: expected the keys {sorted(_RECORDING_KEYS)}")
        try:
            check_recording_path(rec["path"])
        except ValueError as exc:
            raise _reject("unsafe-path", f"{name}: recording {i} path {str(rec['path'])[:80]!r}"
                          f" {exc}; refusing the whole update") from None
        if not isinstance(rec["station"], str) or len(rec["station"]) > 256:
            raise bad(f"recording {i}: station: expected a string of at most 256 characters")
        if not isinstance(rec["content_hash"], str) or not _CONTENT_HASH.match(
                rec["content_hash"]):
            raise bad(f"recording {i}: content_hash: expected at most 128 hash characters")
        for key in ("start_utc", "duration_s"):
            value = rec[key]
            if value is not None and not (_is_number(value) and (key != "duration_s"
                                                                  or value >= 0)):
                raise bad(f"recording {i}: {key}: expected a finite number or null")
        start = rec["start_utc"]
        if start is not None and not EARLIEST_UTC <= start < LATEST_UTC:
            raise bad(f"recording {i}: start_utc {start!r} is outside 1970-2200")
        rate = rec["sample_rate"]
        if rate is not None and not (_is_int(rate) and 0 < rate <= 10_000_000):
            raise bad(f"recording {i}: sample_rate: expected a positive integer or null")
    if nrows and not (recordings and clocks):
        raise bad("rows refer to recordings and clocks, but a table is empty")
    return recordings, clocks


def _check_rows(rows: np.ndarray, nrecordings: int, nclocks: int,
                name: str = "update") -> None:
    def bad(message: str):
        return _reject("bad-rows", f"{name}: rows: {message}")

    if not len(rows):
        return
    if int(rows["recording"].max()) >= nrecordings:
        raise bad(f"a row refers to recording {int(rows['recording'].max())}, "
                  f"but there are {nrecordings}")
    if int(rows["clock"].max()) >= nclocks:
        raise bad(f"a row refers to clock source {int(rows['clock'].max())}, "
                  f"but there are {nclocks}")
    offset, length, capture = rows["offset_s"], rows["length_s"], rows["capture_utc"]
    if not np.isfinite(offset).all():
        raise bad("offset_s must be finite")
    if not (np.isfinite(length).all() and (length > 0).all()):
        raise bad("length_s must be finite and > 0")
    if not np.isfinite(capture).all():
        raise bad("capture_utc must be finite")
    if not ((capture >= EARLIEST_UTC) & (capture < LATEST_UTC)).all():
        worst = capture[(capture < EARLIEST_UTC) | (capture >= LATEST_UTC)][0]
        raise bad(f"capture_utc {worst!r} is outside 1970-2200 (a broken clock or a damaged "
                  "file); refusing the whole update")

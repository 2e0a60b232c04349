"""What a bundle's manifest and graphs may say, checked before anything trusts them.

A bundle arrives on an SD card or over the network; its sha256 values only prove that
the files are the ones its own manifest names, not that they are sane. The checks here
bound every value that sizes memory or work, and the files the graphs may reach:

- `read_manifest_bytes`: manifest.json is a regular file of at most ``MAX_MANIFEST_BYTES``
  (never ``/dev/zero`` read to the end), JSON nested at most ``MAX_JSON_DEPTH`` deep.
- `manifest_problems`: ``bits`` within 1..MAX_CODE_BITS; the front-end (sample rate,
  FFT size, hop, mel bands, window length, frames per window) and the tokenizer
  (``max_length``, ``pad_id``, ``padding``) within ranges a CLAP model can use.
- `file_problem`: each listed file is a regular file inside the bundle folder (not a
  symlink, not a device, not the same file as another entry).
- `graph_problems`: a graph's ONNX external data (if any) names only files listed in
  the manifest (so their sha256 is checked), never ``/etc/passwd`` or ``../x``; its
  output is ``[batch, bits]``; the audio graph's input is ``[batch, 1, frames, mels]``
  of the manifest's front-end. Read with a small protobuf walker over a memory map:
  no ``onnx`` package on a station, and the initializers' bytes are skipped, not read.
- `logits_problem`: what a graph actually returned has ``bits`` columns.

Each function returns the problem in words (naming the key and its allowed range), or
None; `cvahash.model.bundle.check_bundle` raises `BundleError` with it.
"""

from __future__ import annotations

import math
import mmap
import os
import stat
from pathlib import Path
from typing import Any

from ..limits import MAX_CODE_BITS, is_int
from ..safeio import kind_of, read_capped, toml_depth

__all__ = ["MAX_JSON_DEPTH", "MAX_MANIFEST_BYTES", "file_problem", "graph_problems",
           "logits_problem", "manifest_problems", "read_manifest_bytes"]

MAX_MANIFEST_BYTES = 1024 * 1024  # a real one is 4 KiB
MAX_JSON_DEPTH = 16
# Ranges a CLAP-style front-end and tokenizer can use (the shipped models: 48 kHz, 1024
# FFT, hop 480, 64 mels, 10 s, 77 tokens). A value outside them sizes memory or work
# beyond any station (hop 1: 480 001 frames; max_length 1e9: 24 GB of token ids).
LIMITS: dict[str, tuple[float, float]] = {
    "sample_rate": (8000, 192000),
    "n_fft": (64, 16384),
    "hop_length": (16, 16384),
    "n_mels": (8, 512),
    "max_length_s": (1.0, 60.0),
    "f_min": (0.0, 96000.0),
    "f_max": (1.0, 96000.0),
}
MAX_FRAMES = 8192  # frames per window (1001 for the shipped models)
MAX_TOKENS = 2048  # tokenizer.max_length (77 for the shipped models)
PADDINGS = ("max_length", "longest")
_MAX_GRAPH_DEPTH = 8  # subgraphs (If/Loop bodies) inside subgraphs


def read_manifest_bytes(path: Path) -> bytes:
    """manifest.json's bytes; `cvahash.safeio.UnsafeFile` (a ValueError) for a device,
    FIFO or a file over ``MAX_MANIFEST_BYTES``; OSError as ``open``."""
    return read_capped(path, MAX_MANIFEST_BYTES, what="manifest.json")


def _range(where: str, value: Any, lo: float, hi: float, *, integer: bool) -> str | None:
    ok_type = is_int(value) if integer else (
        not isinstance(value, bool) and isinstance(value, (int, float)))
    if not ok_type or not math.isfinite(value) or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        return f"{where} must be {kind} from {lo:g} to {hi:g}, got {value!r}"
    return None


def manifest_problems(manifest: dict) -> str | None:
    """The first value of a parsed manifest outside its range, in words, or None."""
    if toml_depth(manifest) > MAX_JSON_DEPTH:
        return f"nested more than {MAX_JSON_DEPTH} levels deep"
    if why := _range("key 'bits'", manifest.get("bits"), 1, MAX_CODE_BITS, integer=True):
        return why
    fe = manifest.get("frontend")
    if not isinstance(fe, dict):
        return "key 'frontend' must be an object of front-end parameters"
    for key, (lo, hi) in LIMITS.items():
        if key not in fe:
            continue  # FrontendParams' defaults apply
        integer = key in ("sample_rate", "n_fft", "hop_length", "n_mels")
        if why := _range(f"frontend.{key}", fe[key], lo, hi, integer=integer):
            return why
    n_fft, hop = fe.get("n_fft", 1024), fe.get("hop_length", 480)
    if hop > n_fft:
        return (f"frontend.hop_length {hop} is above n_fft {n_fft} (samples between frames "
                "would never be looked at)")
    if fe.get("n_mels", 64) > n_fft // 2 + 1:
        return (f"frontend.n_mels {fe.get('n_mels')} is more than the {n_fft // 2 + 1} "
                f"frequency bins of n_fft {n_fft}")
    frames = fe.get("max_length_s", 10.0) * fe.get("sample_rate", 48000) / hop + 1
    if frames > MAX_FRAMES:
        return (f"frontend: {frames:.0f} frames per window (max_length_s x sample_rate / "
                f"hop_length) is more than {MAX_FRAMES}")
    tok = manifest.get("tokenizer")
    if not isinstance(tok, dict):
        return "key 'tokenizer' must be an object"
    if why := _range("tokenizer.max_length", tok.get("max_length"), 1, MAX_TOKENS,
                     integer=True):
        return why
    if "pad_id" in tok and (why := _range("tokenizer.pad_id", tok["pad_id"], 0, 2**31 - 1,
                                          integer=True)):
        return why
    if "padding" in tok and tok["padding"] not in PADDINGS:
        return f"tokenizer.padding must be one of {', '.join(PADDINGS)}, got {tok['padding']!r}"
    if "pad_token" in tok and (not isinstance(tok["pad_token"], str)
                               or len(tok["pad_token"]) > 64):
        return "tokenizer.pad_token must be a short string"
    files = manifest.get("files")
    if isinstance(files, dict):
        for name, entry in files.items():
            size = entry.get("bytes") if isinstance(entry, dict) else None
            if size is not None and not (is_int(size) and size >= 0):
                return f"files.{name}.bytes must be an integer >= 0, got {size!r}"
    return None


def file_problem(root: Path, name: str, seen: dict[tuple[int, int], str]) -> str | None:
    """Why the bundle entry ``name`` is no regular file of its own inside ``root``, or
    None. ``seen`` maps (device, inode) to the entries checked so far."""
    path = root / name
    try:
        st = os.lstat(path)
    except OSError:
        return None  # missing: the caller's message says so
    if stat.S_ISLNK(st.st_mode):
        return (f"is a symbolic link (to {os.readlink(path)}); a bundle holds its files "
                "itself (re-copy the bundle with the files, e.g. cp -L)")
    if not stat.S_ISREG(st.st_mode):
        return f"is {kind_of(st.st_mode)}, not a regular file"
    key = (st.st_dev, st.st_ino)
    if key in seen and seen[key] != name:
        return f"is the same file as {seen[key]} (a hard link); each file must be its own"
    seen[key] = name
    return None


# ---------------------------------------------------------------- a minimal protobuf walk


class _Malformed(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, wire type, value) of one message; length-delimited values as a
    (start, end) span, varints as ints; fixed-width values skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _Malformed("a field runs past the end of its message")
            yield number, wire, (pos, pos + n)
            pos += n
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise _Malformed(f"wire type {wire}")
    if pos != end:
        raise _Malformed("a field runs past the end of its message")


def _text(buf, span) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", "replace")


# ONNX field numbers (onnx.proto3)
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INIT, _GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_SPARSE = 1, 5, 11, 12, 15
_NODE_ATTR = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_TENSOR_EXTERNAL, _TENSOR_LOCATION = 13, 14
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2


def _tensor_locations(buf, span, out: list[str]) -> None:
    external = []
    for number, wire, value in _fields(buf, *span):
        if number == _TENSOR_EXTERNAL and wire == 2:
            entry = {}
            for n2, w2, v2 in _fields(buf, *value):
                if w2 == 2:
                    entry[n2] = _text(buf, v2)
            if entry.get(1) == "location":
                external.append(entry.get(2, ""))
        elif number == _TENSOR_LOCATION and wire == 0 and value == 1 and not external:
            external.append("")  # EXTERNAL without a location
    out.extend(external)


def _sparse_locations(buf, span, out: list[str]) -> None:
    for number, wire, value in _fields(buf, *span):
        if number in (_SPARSE_VALUES, _SPARSE_INDICES) and wire == 2:
            _tensor_locations(buf, value, out)


def _graph_walk(buf, span, out: list[str], depth: int) -> None:
    if depth > _MAX_GRAPH_DEPTH:
        raise _Malformed(f"subgraphs nested more than {_MAX_GRAPH_DEPTH} deep")
    for number, wire, value in _fields(buf, *span):
        if wire != 2:
            continue
        if number == _GRAPH_INIT:
            _tensor_locations(buf, value, out)
        elif number == _GRAPH_SPARSE:
            _sparse_locations(buf, value, out)
        elif number == _GRAPH_NODE:
            for n2, w2, attr in _fields(buf, *value):
                if n2 != _NODE_ATTR or w2 != 2:
                    continue
                for n3, w3, v3 in _fields(buf, *attr):
                    if w3 != 2:
                        continue
                    if n3 in (_ATTR_T, _ATTR_TENSORS):
                        _tensor_locations(buf, v3, out)
                    elif n3 in (_ATTR_SPARSE, _ATTR_SPARSES):
                        _sparse_locations(buf, v3, out)
                    elif n3 in (_ATTR_G, _ATTR_GRAPHS):
                        _graph_walk(buf, v3, out, depth + 1)


def _value_dims(buf, span) -> list[int | str | None]:
    """Dims of a ValueInfoProto's tensor type: ints, symbolic names, or None (unknown)."""
    dims: list[int | str | None] = []
    for n, w, v in _fields(buf, *span):
        if n != 2 or w != 2:  # type
            continue
        for n2, w2, v2 in _fields(buf, *v):
            if n2 != 1 or w2 != 2:  # tensor_type
                continue
            for n3, w3, v3 in _fields(buf, *v2):
                if n3 != 2 or w3 != 2:  # shape
                    continue
                for n4, w4, v4 in _fields(buf, *v3):
                    if n4 != 1 or w4 != 2:  # dim
                        continue
                    dim: int | str | None = None
                    for n5, w5, v5 in _fields(buf, *v4):
                        if n5 == 1 and w5 == 0:
                            dim = v5
                        elif n5 == 2 and w5 == 2:
                            dim = _text(buf, v5)
                    dims.append(dim)
    return dims


def _graph_io(buf) -> tuple[list[str], list[list], list[list]]:
    """(external data locations, input dims, output dims) of a ModelProto."""
    out: list[str] = []
    inputs: list[list] = []
    outputs: list[list] = []
    for number, wire, value in _fields(buf, 0, len(buf)):
        if number != _MODEL_GRAPH or wire != 2:
            continue
        _graph_walk(buf, value, out, 0)
        for n2, w2, v2 in _fields(buf, *value):
            if n2 == _GRAPH_OUTPUT and w2 == 2:
                outputs.append(_value_dims(buf, v2))
            elif n2 == _GRAPH_INPUT and w2 == 2:
                inputs.append(_value_dims(buf, v2))
    return out, inputs, outputs


def graph_problems(root: Path, name: str, manifest: dict) -> str | None:
    """Why the ONNX graph ``root/name`` may not be loaded with this manifest, or None:
    external data outside the bundle's listed files, not a readable ONNX model, an
    output that is not [batch, bits], an audio input not [batch, 1, frames, mels]."""
    path = root / name
    listed = set(manifest.get("files") or {})
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return "is empty, not an ONNX model"
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                locations, inputs, outputs = _graph_io(mm)
    except _Malformed as exc:
        return f"is not a valid ONNX model ({exc})"
    except (OSError, ValueError) as exc:
        return f"cannot be read ({exc})"
    except RecursionError:
        return "is not a valid ONNX model (nested too deeply)"
    for loc in locations:
        plain = loc and Path(loc).name == loc and loc not in (".", "..")
        if not plain or loc not in listed or loc in (name, "manifest.json"):
            return (f"refers to external data {loc!r}, which is not a file listed in "
                    "manifest.json inside the bundle; a bundle's graphs may only read the "
                    "bundle's own files (export it again)")
    bits = manifest.get("bits")
    if not outputs:
        return "declares no output"
    dims = outputs[0]
    if len(dims) != 2 or (is_int(dims[1]) and dims[1] != bits):
        shown = "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
        return (f"outputs logits of shape {shown}, but manifest.json says bits = {bits}; "
                "the manifest does not belong to this graph (export the bundle again)")
    if name == "audio.onnx" and inputs:
        fe = manifest.get("frontend") or {}
        try:
            from .frontend import FrontendParams

            p = FrontendParams.from_dict(fe)
        except (TypeError, ValueError):
            return None  # the manifest check names the front-end problem
        want = [1, p.n_frames, p.n_mels]
        got = inputs[0]
        if len(got) == 4 and any(is_int(g) and g != w for g, w in zip(got[1:], want, strict=True)):
            return (f"takes input of shape [{', '.join(map(str, got))}], but the manifest's "
                    f"front-end makes [batch, {', '.join(map(str, want))}]; the manifest "
                    "does not belong to this graph (export the bundle again)")
    return None


def logits_problem(logits, bits: int) -> str | None:
    """Why a graph's output is no [n, bits] array of logits, or None."""
    shape = getattr(logits, "shape", None)
    if shape is None or len(shape) != 2 or shape[1] != bits:
        return (f"returned logits of shape {shape}, not [n, {bits}] as manifest.json's bits "
                "says; the manifest does not belong to this graph (export the bundle again)")
    return None

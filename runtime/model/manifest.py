"""Bounds on what a bundle's manifest and graphs may ask of a station.

A bundle that passes its checksums can still be hostile or broken: a tokenizer
``max_length`` of 1e9 (gigabytes per query), ``bits`` that differ from what the graph
outputs, absurd front-end sizes, a graph that is a symlink to another file, or ONNX
external data pointing outside the bundle (``/etc/passwd``). ``check_bounds`` refuses
all of these before anything is loaded; ``bundle verify`` and ``ModelBundle.open`` run
it. The ONNX files are read with a small protobuf walker (no ``onnx`` package on a
station): only the graph outputs' shapes and the tensors' external-data entries.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from ..errors import BundleError
from ..limits import MAX_CODE_BITS
from ..safeio import toml_depth

MAX_MANIFEST_BYTES = 1 << 20
MAX_BITS = MAX_CODE_BITS
MAX_TOKENS = 4096
MAX_N_MELS = 512
MAX_N_FFT = 1 << 16
MIN_HOP = 16
MAX_SAMPLE_RATE = 384_000
MAX_WINDOW_S = 600.0
MAX_FEATURE_VALUES = 64 << 20       # frames x mels of one window
MAX_JSON_DEPTH = 16                 # a real manifest nests 4 deep
PADDINGS = ("max_length", "longest")


def read_manifest_bytes(path: Path) -> bytes:
    """manifest.json, refusing anything but a regular file of at most 1 MiB."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
    except OSError as e:
        raise BundleError(f"{path}: cannot be read as a regular file ({e.strerror or e}); "
                          "re-copy the bundle") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{path}: is not a regular file; re-copy the bundle")
        data = os.read(fd, MAX_MANIFEST_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes; not a manifest")
    return data


def _int_in(value, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def check_bounds(root: Path, manifest: dict) -> None:
    """Refuse (BundleError) a manifest whose values or graphs a station cannot safely
    load. ``manifest`` has passed the format checks of bundle._read_manifest."""
    check_values(root, manifest)
    check_files(root, manifest)


def check_values(root: Path, manifest: dict) -> None:
    """The manifest's numbers are in ranges a station can hold (cheap: no file read)."""
    root = Path(root)
    where = root / "manifest.json"
    if toml_depth(manifest) > MAX_JSON_DEPTH:
        raise BundleError(f"{where}: nested more than {MAX_JSON_DEPTH} levels deep; not a "
                          "manifest (export the bundle again)")
    bits = manifest["bits"]
    if not _int_in(bits, 1, MAX_BITS):
        raise BundleError(f"{where}: bits {bits!r} is outside 1..{MAX_BITS}")
    tok = manifest.get("tokenizer")
    if isinstance(tok, dict) and not _int_in(tok.get("max_length"), 1, MAX_TOKENS):
        raise BundleError(f"{where}: tokenizer.max_length {tok.get('max_length')!r} is outside "
                          f"1..{MAX_TOKENS} tokens")
    if isinstance(tok, dict) and tok.get("padding", "max_length") not in PADDINGS:
        raise BundleError(f"{where}: tokenizer.padding {tok.get('padding')!r} is not one of "
                          f"{', '.join(PADDINGS)}")
    if isinstance(tok, dict) and "pad_id" in tok and not _int_in(tok["pad_id"], 0, 2**31 - 1):
        raise BundleError(f"{where}: tokenizer.pad_id {tok['pad_id']!r} is outside "
                          f"0..{2**31 - 1}")
    fe = manifest.get("frontend")
    if isinstance(fe, dict):
        checks = (("n_mels", 1, MAX_N_MELS), ("n_fft", 2, MAX_N_FFT),
                  ("hop_length", MIN_HOP, MAX_N_FFT), ("sample_rate", 1000, MAX_SAMPLE_RATE))
        for key, lo, hi in checks:
            if key in fe and not _int_in(fe[key], lo, hi):
                raise BundleError(f"{where}: frontend.{key} {fe[key]!r} is outside {lo}..{hi}")
        length = fe.get("max_length_s", 10.0)
        if isinstance(length, bool) or not isinstance(length, (int, float)) \
                or not 0 < length <= MAX_WINDOW_S:
            raise BundleError(f"{where}: frontend.max_length_s {length!r} is outside "
                              f"0..{MAX_WINDOW_S} s")
        rate, hop = fe.get("sample_rate", 48000), fe.get("hop_length", 480)
        frames = int(length * rate) // hop + 1
        if frames * fe.get("n_mels", 64) > MAX_FEATURE_VALUES:
            raise BundleError(f"{where}: one window would be {frames} frames x "
                              f"{fe.get('n_mels', 64)} mels; too large for a station")


def check_files(root: Path, manifest: dict, graphs=None) -> None:
    """Every listed file is a regular file inside the bundle; the graphs named in
    ``graphs`` (None: every .onnx file) keep their external data inside it and output
    ``bits`` values (this reads them: callers pass the graphs they just hashed)."""
    root = Path(root)
    bits = manifest["bits"]
    real_root = root.resolve()
    seen: dict[tuple[int, int], str] = {}
    for name in manifest.get("files", {}):
        path = root / name
        if path.is_symlink() or not path.is_file():
            raise BundleError(f"{path}: must be a regular file inside the bundle, not a "
                              "link or anything else; re-copy the bundle")
        st = path.stat()
        if seen.setdefault((st.st_dev, st.st_ino), name) != name:
            raise BundleError(f"{path}: is the same file as {seen[(st.st_dev, st.st_ino)]} "
                              "(a hard link); each bundle file must be its own (re-copy the "
                              "bundle)")
        if path.resolve().parent != real_root:
            raise BundleError(f"{path}: lies outside the bundle folder")
        if name.endswith(".onnx") and (graphs is None or name in graphs):
            check_graph(path, real_root, bits)


# ------------------------------------------------------------------ ONNX, minimally
def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of one protobuf message; bytes for type 2."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(data, pos)
            if pos + n > len(data):
                raise ValueError("truncated field")
            value, pos = data[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield field, wire, value


def _tensor_locations(tensor: bytes) -> list[str]:
    out = []
    for f, w, v in _fields(tensor):
        if f == 13 and w == 2:                  # external_data: StringStringEntryProto
            entry = {ff: vv for ff, ww, vv in _fields(v) if ww == 2}
            if entry.get(1) == b"location":
                out.append(bytes(entry.get(2, b"")).decode("utf-8", "replace"))
    return out


def _graph(graph: bytes, depth: int = 0) -> tuple[list[str], list[list]]:
    """External data locations and output shapes ([dim or None]) of a GraphProto."""
    if depth > 16:
        raise ValueError("graphs nested too deeply")
    locations, outputs = [], []
    for f, w, v in _fields(graph):
        if w != 2:
            continue
        if f in (5, 15):                        # initializer, sparse_initializer
            locations += _tensor_locations(v)
        elif f == 1:                            # node -> attribute
            for af, aw, av in _fields(v):
                if af == 5 and aw == 2:
                    for tf, tw, tv in _fields(av):
                        if tw == 2 and tf in (5, 10):       # t, tensors
                            locations += _tensor_locations(tv)
                        elif tw == 2 and tf in (6, 11):     # g, graphs
                            locations += _graph(tv, depth + 1)[0]
        elif f == 12:                           # output: ValueInfoProto
            dims = []
            for vf, vw, vv in _fields(v):
                if vf == 2 and vw == 2:         # type -> tensor_type -> shape -> dim
                    for tf, tw, tv in _fields(vv):
                        if tf == 1 and tw == 2:
                            for sf, sw, sv in _fields(tv):
                                if sf == 2 and sw == 2:
                                    for df, dw, dv in _fields(sv):
                                        if df == 1 and dw == 2:
                                            d = {ff: vv2 for ff, ww, vv2 in _fields(dv)}
                                            dims.append(d.get(1) if isinstance(d.get(1), int)
                                                        else None)
            outputs.append(dims)
    return locations, outputs


def check_graph(path: Path, real_root: Path, bits: int) -> None:
    """External data only inside the bundle; output width ``bits`` (BundleError)."""
    problem = None
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise ValueError("the file is empty")
            # Mapped, walked through zero-copy views: a 600 MB graph costs page cache,
            # not a second copy in memory (initializers' bytes are skipped, not read).
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            data = memoryview(mm)
            graph = next((v for f, w, v in _fields(data) if f == 7 and w == 2), None)
            if graph is None:
                raise ValueError("no graph")
            locations, outputs = _graph(graph)
            del data, graph
        finally:
            try:
                mm.close()
            except BufferError:  # a view still held by a failed parse: freed with it
                pass
    except (ValueError, IndexError, RecursionError, OSError) as exc:
        problem = str(exc)
    if problem is not None:
        # `bundle verify` must not pass what onnxruntime will refuse at the first query
        raise BundleError(f"{path}: is not a valid ONNX model ({problem}); re-copy the bundle "
                          "or export it again")

    for loc in locations:
        target = (path.parent / loc).resolve()
        if os.path.isabs(loc) or target.parent != real_root or not target.is_file() \
                or (path.parent / loc).is_symlink():
            raise BundleError(f"{path}: its external data {loc!r} is not a regular file inside "
                              "the bundle; refusing to load it")
    if outputs and outputs[0] and isinstance(outputs[0][-1], int) and outputs[0][-1] != bits:
        raise BundleError(f"{path}: the graph outputs {outputs[0][-1]} values per input but "
                          f"manifest.json says bits = {bits}; the bundle does not hold together "
                          "(export it again)")

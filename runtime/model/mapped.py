"""A private copy of a bundle's text graph whose weights ONNX Runtime maps instead of copying.

Creating an ONNX Runtime session from a self-contained .onnx file parses the whole file
and copies every weight into memory; for the full-size int8 text graph (126 MB) that is
most of a cold ``cvahash search`` (docs/benchmarks/runtime.md, run 8). ONNX Runtime maps
a graph's *external data* file (``mmap``) instead: the weights stay in the page cache and
a session is ready in tens of milliseconds. The bundle format keeps its self-contained
graphs (the fingerprint covers text.onnx's sha256, and a side file would not be covered),
so the station makes the external-data form itself, once, the first time it loads a text
graph:

    $CVAHASH_CACHE_DIR/mapped-graphs/<sha256 of text.onnx>/graph.onnx        graph only
                                                          graph.onnx.data   the weights
                                                          record.json       identities

ONNX Runtime writes the copy while it creates the session on the bundle's own text.onnx
(``optimized_model_filepath``), at the level the bundle asks for; the copy is then
loaded with no optimisation at all (it already has them) and kept only when it gives
bit-identical logits to the original on a few token sequences of several lengths. Only
graphs the exporter saved pre-optimised (``graphs.text.ort_optimized == "extended"``:
hardware-independent fusions only) and the CPU provider use a copy.

Trust: the copy is used while both its files keep the size, mtime, ctime, inode and
device recorded when they were written, and the onnxruntime version is the one that wrote
them (the same rule as the record of verified bundle files, `cvahash.model.verified`);
otherwise it is made again. ``cvahash bundle verify`` never looks at copies. At most
`KEEP` copies are kept (oldest removed first); a cache folder that cannot be written only
costs the speed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from .verified import cache_dir

log = logging.getLogger(__name__)

FOLDER = "mapped-graphs"
GRAPH = "graph.onnx"
DATA = "graph.onnx.data"
RECORD = "record.json"
KEEP = 2  # a station holds one or two bundles
# Initializers at least this big go to the mapped file; small ones stay in the graph.
MIN_MAPPED_BYTES = 1024


def _identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _folder(digest: str) -> Path:
    return cache_dir() / FOLDER / digest.lower()


def find(digest: str, ort_version: str) -> Path | None:
    """The mapped copy of the graph whose sha256 is ``digest`` (its graph.onnx), or None
    when there is none or it is not exactly as it was written."""
    folder = _folder(digest)
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        if not isinstance(record, dict) or record.get("onnxruntime") != ort_version \
                or record.get("source_sha256") != digest.lower():
            return None
        files = record.get("files")
        if not isinstance(files, dict) or set(files) != {GRAPH, DATA}:
            return None
        for name, ident in files.items():
            if _identity(folder / name) != ident:
                return None
    except (OSError, ValueError):
        return None
    return folder / GRAPH


def save_options(options, staging: Path) -> None:
    """Ask ONNX Runtime (session ``options`` about to load the original graph) to write
    the external-data copy into ``staging`` while it creates the session."""
    options.optimized_model_filepath = str(staging / GRAPH)
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", DATA)
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes",
        str(MIN_MAPPED_BYTES))


def staging_folder() -> Path | None:
    """A fresh folder beside the copies to write a new one into, or None (not writable)."""
    import tempfile  # lazy: only the first load of a graph makes a copy

    try:
        parent = cache_dir() / FOLDER
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=parent))
    except OSError:
        return None


def publish(staging: Path, digest: str, ort_version: str) -> Path | None:
    """Record the copy written into ``staging`` and move it into place; returns its
    graph path, or None (then ``staging`` is removed and nothing is kept)."""
    try:
        files = {name: _identity(staging / name) for name in (GRAPH, DATA)}
        record = {"source_sha256": digest.lower(), "onnxruntime": ort_version,
                  "files": files, "made": time.time()}
        (staging / RECORD).write_text(json.dumps(record) + "\n", encoding="utf-8")
        folder = _folder(digest)
        if find(digest, ort_version) is not None:  # another process was quicker
            discard(staging)
            return folder / GRAPH
        if folder.exists():  # a stale copy: replace it
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)  # fails if another process just put one there
        # The rename changes no identity (same inodes, mtime and ctime kept), so the
        # record stays true for the files in their final place.
    except OSError as exc:
        log.debug("mapped text graph not kept (%s)", exc)
        discard(staging)
        return find(digest, ort_version)
    _prune(keep=folder)
    return folder / GRAPH


def discard(staging: Path | None) -> None:
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)


def _prune(keep: Path) -> None:
    """Remove the oldest copies beyond `KEEP` (and staging folders of crashed runs)."""
    parent = keep.parent
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    copies, day_ago = [], time.time() - 86400
    for entry in entries:
        try:
            mtime = entry.stat().st_mtime
        except OSError:
            continue
        if entry.name.startswith(".staging-"):
            if mtime < day_ago:
                shutil.rmtree(entry, ignore_errors=True)
        elif entry != keep and entry.is_dir():
            copies.append((mtime, entry))
    for _, entry in sorted(copies)[:max(0, len(copies) - (KEEP - 1))]:
        shutil.rmtree(entry, ignore_errors=True)

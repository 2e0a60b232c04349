"""Is a bundle whole and unchanged: its manifest's format, its files, their sha256 and
the fingerprint.

`check_bundle` verifies a bundle folder without loading any model (what `cvahash bundle
verify` starts with and `ModelBundle.open` relies on); `fingerprint_of` is the identity
code stores and update files bind to. What the values may ask of a station (sizes,
graph outputs, external data) is checked by `cvahash.model.manifest`. The file layout
is in docs/bundle.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import BundleError, InvalidArgument
from . import verified
from .manifest import check_files, check_values, read_manifest_bytes

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TEXT_GRAPH = "text.onnx"
AUDIO_GRAPH = "audio.onnx"
TOKENIZER_FILE = "tokenizer.json"
BUNDLE_FILES = (TEXT_GRAPH, AUDIO_GRAPH, TOKENIZER_FILE)
# Manifest keys every reader of format 1 relies on.
REQUIRED_KEYS = ("format_version", "bits", "frontend", "tokenizer", "precision", "files",
                 "fingerprint")


# ---------------------------------------------------------------- hashing and fingerprint


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (graphs are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint_of(manifest: Mapping[str, Any]) -> str:
    """The bundle's fingerprint: 16 hex chars of sha256 over a canonical JSON of what
    decides the codes: bits, front-end parameters, tokenizer settings and the sha256 of
    text.onnx, audio.onnx and tokenizer.json.

    Two bundles with the same fingerprint turn the same input into the same codes; code
    stores and update packages bind to it. Descriptive fields (source model, precision
    label, quantisation report, creation time) are left out on purpose: they are covered
    by the graph hashes where they matter.
    """
    files = manifest.get("files") or {}
    semantic = {
        "bits": manifest.get("bits"),
        "frontend": manifest.get("frontend"),
        "tokenizer": manifest.get("tokenizer"),
        "sha256": {name: (files.get(name) or {}).get("sha256") for name in BUNDLE_FILES},
    }
    canonical = json.dumps(semantic, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]


# ---------------------------------------------------------------- manifest checks


def _read_manifest(root: Path) -> dict:
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleError(f"{root}: not a model bundle directory (it does not exist or is a "
                          "file); make one with `cvahash export RUN_DIR --out DIR`")
    if not os.path.lexists(path):  # anything else there: read_manifest_bytes names it
        raise BundleError(f"{path}: missing; {root} is not a complete model bundle "
                          "(re-copy it or export it again)")
    try:
        manifest = json.loads(read_manifest_bytes(path).decode("utf-8"))
    except RecursionError:
        raise BundleError(f"{path}: not valid JSON (nested too deeply); re-copy the "
                          "bundle") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable or not valid JSON ({exc}); "
                          "re-copy the bundle") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: expected a JSON object at the top level")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise BundleError(f"{path}: key 'format_version' is missing or not an integer")
    if version > FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {version} is newer than this cvahash reads "
                          f"(format {FORMAT_VERSION}); upgrade cvahash on this device")
    if version < 1:
        raise BundleError(f"{path}: bundle format {version} is not valid")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{path}: missing key(s) {', '.join(missing)}")
    bits = manifest["bits"]
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise BundleError(f"{path}: key 'bits' must be a positive integer, got {bits!r}")
    if not isinstance(manifest["files"], dict):
        raise BundleError(f"{path}: key 'files' must be an object of file name -> sha256")
    check_values(root, manifest)
    return manifest


# The files each graph needs: verified before that graph is loaded.
GRAPH_FILES = {"text": (TEXT_GRAPH, TOKENIZER_FILE), "audio": (AUDIO_GRAPH,)}


def files_for(graphs) -> set[str] | None:
    if graphs is None:
        return None
    unknown = [g for g in graphs if g not in GRAPH_FILES]
    if unknown:
        raise InvalidArgument(f"graphs must be among {sorted(GRAPH_FILES)}, got {unknown}")
    return {name for g in graphs for name in GRAPH_FILES[g]}


def check_digest(root: Path, name: str, entry: dict, cache: bool) -> bool:
    """Compare a file's sha256 with the manifest's (``cache``: take a digest recorded
    for the unchanged file instead of reading it; record a fresh match). Returns
    whether the file was read (then its graph checks run too, see model.manifest)."""
    path = root / name
    digest = verified.known_digest(path) if cache else None
    fresh = digest is None
    if fresh:
        digest = sha256_file(path)
    if digest != entry["sha256"].lower():
        raise BundleError(f"{path}: sha256 {digest[:16]}... does not match manifest.json "
                          f"({entry['sha256'][:16]}...); the file was changed or damaged "
                          "(re-copy the bundle)")
    if cache and fresh:
        verified.remember(path, digest)
    return fresh


def check_bundle(root: str | Path, *, graphs=None, cache: bool = False) -> dict:
    """Verify a bundle without loading any model; return its manifest.

    Checks, in order: manifest.json readable and of a known format; every required file
    listed and present; every listed file's size and sha256; the fingerprint recomputed
    from the manifest. Raises `BundleError` naming the first file that fails.

    ``graphs`` (e.g. ``("text",)``): hash only the files those graphs need (the others'
    presence and size are still checked); None hashes every listed file. ``cache``:
    reuse digests recorded for unchanged files (`cvahash.model.verified`).
    """
    root = Path(root)
    manifest = _read_manifest(root)
    hashed = files_for(graphs)
    files = manifest["files"]
    read: set[str] = set()
    for name in BUNDLE_FILES:
        if name not in files:
            raise BundleError(f"{root / MANIFEST_NAME}: does not list {name}; the bundle is "
                              "incomplete (export it again)")
    for name, entry in files.items():
        path = root / name
        # Names come from the manifest: refuse anything that would leave the directory.
        if Path(name).name != name or name in ("", ".", ".."):
            raise BundleError(f"{root / MANIFEST_NAME}: file name {name!r} is not a plain "
                              "file name inside the bundle")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise BundleError(f"{root / MANIFEST_NAME}: files.{name} needs a 'sha256' string")
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle (listed in manifest.json); "
                              "re-copy the bundle")
        size = entry.get("bytes")
        if size is not None and path.stat().st_size != size:
            raise BundleError(f"{path}: is {path.stat().st_size} bytes, manifest.json says "
                              f"{size}; the file is truncated or replaced (re-copy the bundle)")
        if (hashed is None or name in hashed) and check_digest(root, name, entry, cache):
            read.add(name)
    expected = fingerprint_of(manifest)
    if manifest["fingerprint"] != expected:
        raise BundleError(f"{root / MANIFEST_NAME}: fingerprint {manifest['fingerprint']!r} does "
                          f"not match its contents ({expected}); manifest.json was edited")
    check_files(root, manifest, graphs=read)
    return manifest

"""A Library: a code store bound to the model bundle that made its codes.

Codes are only comparable with codes of the same bundle (the store records the
bundle's fingerprint), so a store is always opened together with its bundle. This is
the one way `index`, `search`, `info`, the daemon and updates open a store:

    with Library.open("/data/store", mode="r", graphs=("text",)) as lib:
        hits = lib.store.search(lib.bundle.encode_text(["owl hooting"]), 5)

    Library.open(DIR, BUNDLE, mode="w", create=True)   # index: open or make the store

Where the bundle is, when the caller does not say (`resolve_bundle`): the folder
recorded beside the store at index time (``indexed-with.json``), else
``$CVAHASH_BUNDLE``. The bundle is opened and checked against the store's fingerprint
before anything is written, so a bad bundle or a mismatch leaves no new store behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import BundleError, FingerprintMismatch, StoreError
from ..limits import INDEXED_WITH, META_FILE
from ..model.bundle import ModelBundle
from ..store.code_store import CodeStore
from ..timeutil import iso_utc, utc_datetime

__all__ = ["BUNDLE_ENV", "INDEXED_WITH", "Library", "record_bundle", "recorded_bundle",
           "resolve_bundle", "store_info"]

BUNDLE_ENV = "CVAHASH_BUNDLE"


def is_store(directory: Path) -> bool:
    return (Path(directory) / META_FILE).is_file()


def recorded_bundle(store_dir: str | os.PathLike) -> str | None:
    """The bundle folder recorded at index time, or None."""
    try:
        data = json.loads((Path(store_dir) / INDEXED_WITH).read_text(encoding="utf-8"))
        return str(data["bundle"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_bundle(store_dir: str | os.PathLike, bundle: ModelBundle) -> None:
    """Remember ``bundle``'s folder (absolute) and fingerprint in the store folder
    (temp file + rename: a cut leaves the old record or the new one)."""
    path = Path(store_dir) / INDEXED_WITH
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"bundle": str(Path(bundle.path).resolve()),
                               "fingerprint": bundle.fingerprint}) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def resolve_bundle(explicit: str | os.PathLike | None, recorded: str | None) -> Path:
    """The bundle folder to use: ``explicit`` (``--bundle``), else the one recorded in
    the store at index time if it still exists, else ``$CVAHASH_BUNDLE``. Raises
    `BundleError` saying what to pass when none is usable."""
    if explicit:
        return Path(explicit)
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    env = os.environ.get(BUNDLE_ENV)
    if env:
        return Path(env)
    where = (
        f"the store was indexed with {recorded}, which no longer exists"
        if recorded
        else "the store does not record which bundle made it"
    )
    raise BundleError(
        f"no model bundle given and {where}: pass --bundle DIR (the folder with manifest.json) "
        f"or set {BUNDLE_ENV}=DIR"
    )


def _not_a_store(directory: Path) -> StoreError:
    return StoreError(
        f"{directory} is not a code store (no metadata database there); make one with "
        f"`cvahash index RECORDINGS --db {directory} --bundle BUNDLE`"
    )


class Library:
    """An open code store and the bundle that made its codes (same fingerprint).

    Use `Library.open`; close it (or use ``with``) to release the store. ``store`` is a
    `cvahash.store.code_store.CodeStore`, ``bundle`` a `cvahash.model.bundle.ModelBundle`.
    """

    def __init__(self, directory: Path, store: CodeStore, bundle: ModelBundle):
        self.directory = directory
        self.store = store
        self.bundle = bundle

    @classmethod
    def open(cls, directory: str | os.PathLike,
             bundle: str | os.PathLike | ModelBundle | None = None, *, mode: str = "r",
             create: bool = False, threads: int = 0, providers=None, graphs=None,
             **store_options: Any) -> Library:
        """The store in ``directory`` with its bundle.

        ``bundle``: a bundle folder, an open `ModelBundle`, or None (the recorded one,
        then ``$CVAHASH_BUNDLE``). ``mode="r"``: the store must exist. ``mode="w"``: open
        it for appending, or with ``create`` make a new store bound to the bundle in a
        missing or empty folder (and remember the bundle's folder). ``graphs``: the graphs
        the caller will run (``("text",)`` for a text search), so only their files are
        hashed now (`ModelBundle.open`). ``store_options`` go to the store (commit
        batching). The store is opened once. Raises StoreError, BundleError or
        FingerprintMismatch (both fingerprints in the message).
        """
        if mode not in ("r", "w"):
            raise ValueError(f'mode must be "r" or "w", got {mode!r}')
        directory = Path(directory)
        opener = _BundleOpener(directory, bundle, threads, providers, graphs)
        if not is_store(directory):
            if mode != "w" or not create:
                raise _not_a_store(directory)
            if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
                raise StoreError(
                    f"{directory} exists and is not a code store (nor an empty folder); "
                    "choose a new --db folder"
                )
            model = opener.open(None)
            store = CodeStore.create(directory, model.bits, model.fingerprint, **store_options)
            record_bundle(directory, model)
            return cls(directory, store, model)
        store = CodeStore.open(directory, "a" if mode == "w" else "r", **store_options)
        try:
            model = opener.open(store.fingerprint)
            if mode == "w" and bundle is not None and recorded_bundle(directory) is None:
                record_bundle(directory, model)
        except BaseException:
            store.close()
            raise
        return cls(directory, store, model)

    @property
    def bits(self) -> int:
        return self.bundle.bits

    @property
    def fingerprint(self) -> str:
        return self.bundle.fingerprint

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Library({str(self.directory)!r}, bundle={self.bundle!r})"


class _BundleOpener:
    """Opens the bundle for a store and refuses one with another fingerprint."""

    def __init__(self, directory: Path, bundle, threads: int, providers, graphs):
        self.directory, self.bundle = directory, bundle
        self.threads, self.providers, self.graphs = threads, providers, graphs

    def open(self, store_fingerprint: str | None) -> ModelBundle:
        recorded = recorded_bundle(self.directory)
        if isinstance(self.bundle, ModelBundle):
            model, path = self.bundle, self.bundle.path
        else:
            path = resolve_bundle(self.bundle, recorded)
            model = ModelBundle.open(path, threads=self.threads, providers=self.providers,
                                     graphs=self.graphs)
        if store_fingerprint is not None and model.fingerprint != store_fingerprint:
            hint = f" (it was indexed with {recorded})" if recorded else ""
            raise FingerprintMismatch(
                f"the code store {self.directory} was made with bundle fingerprint "
                f"{store_fingerprint}, but the bundle {path} has fingerprint "
                f"{model.fingerprint}: codes of different bundles cannot be compared; pass "
                f"the bundle that made the store{hint}, or index into a new --db with this one"
            )
        return model


def store_info(store_dir: str | os.PathLike) -> dict[str, Any]:
    """What ``cvahash info`` shows, as a JSON-ready dict (opens the store read-only; no
    bundle is needed)."""
    store_dir = Path(store_dir)
    if not is_store(store_dir):
        raise StoreError(f"{store_dir} is not a code store (no metadata database there)")
    with CodeStore.open(store_dir, "r") as store:
        stats = store.stats()
        recordings = store.recordings()
    first, last = stats["first_capture_utc"], stats["last_capture_end_utc"]
    audio_s = sum(r.duration_s or 0.0 for r in recordings)
    return {
        "store": str(store_dir),
        "windows": stats["rows"],
        "recordings": stats["recordings"],
        "audio_hours": round(audio_s / 3600, 3),
        "first_capture": None if first is None else iso_utc(utc_datetime(first)),
        "last_capture_end": None if last is None else iso_utc(utc_datetime(last)),
        "stations": {name or "(none)": n for name, n in sorted(stats["stations"].items())},
        "bits": stats["bits"],
        "fingerprint": stats["fingerprint"],
        "bundle": recorded_bundle(store_dir),
        "code_bytes": stats["code_bytes"],
        "metadata_bytes": stats["metadata_bytes"],
        "bytes": stats["code_bytes"] + stats["metadata_bytes"],
        "forgotten_windows": stats["forgotten_rows"],
    }

"""The Library: a store opened together with the bundle that made it (shipped demo bundle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cvahash.errors import FingerprintMismatch, StoreError
from cvahash.library import library as library_module
from cvahash.library.library import INDEXED_WITH, Library, recorded_bundle
from cvahash.model.bundle import ModelBundle
from cvahash.store.code_store import CodeStore

DEMO = Path(__file__).parent / "data" / "demo-bundle"


def test_create_binds_the_store_to_the_bundle_and_records_its_folder(tmp_path):
    db = tmp_path / "store"
    with Library.open(db, DEMO, mode="w", create=True) as lib:
        assert lib.store.fingerprint == lib.bundle.fingerprint == lib.fingerprint
        assert lib.store.bits == lib.bits == 64
    assert recorded_bundle(db) == str(DEMO.resolve())
    # reading needs no --bundle: the recorded folder is found
    with Library.open(db) as lib:
        assert lib.bundle.path == DEMO.resolve()


def test_a_missing_store_is_not_created_when_reading(tmp_path):
    with pytest.raises(StoreError, match=r"not a code store.*cvahash index"):
        Library.open(tmp_path / "none", DEMO)
    assert not (tmp_path / "none").exists()


def test_a_folder_with_other_files_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a code store .*nor an empty folder"):
        Library.open(tmp_path / "x", DEMO, mode="w", create=True)
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["notes.txt"]


def test_another_bundle_is_refused_with_both_fingerprints(tmp_path):
    db = tmp_path / "store"
    CodeStore.create(db, 64, "0123456789abcdef").close()
    demo = ModelBundle.open(DEMO).fingerprint
    with pytest.raises(FingerprintMismatch, match=f"0123456789abcdef.*{demo}"):
        Library.open(db, DEMO)
    # the refused open left the store usable and unlocked for a writer
    CodeStore.open(db, "a").close()
    assert not (db / INDEXED_WITH).exists()


def test_the_store_is_opened_once(tmp_path, monkeypatch):
    db = tmp_path / "store"
    Library.open(db, DEMO, mode="w", create=True).close()
    opened = []
    real = CodeStore.open.__func__
    monkeypatch.setattr(library_module.CodeStore, "open",
                        classmethod(lambda cls, *a, **kw: opened.append(a) or real(cls, *a, **kw)))
    with Library.open(db, DEMO, graphs=("text",)) as lib:
        codes = lib.bundle.encode_text(["owl hooting"])
        assert lib.store.search(codes, 3) == [[]]
    assert len(opened) == 1


def test_an_open_bundle_can_be_passed(tmp_path):
    bundle = ModelBundle.open(DEMO)
    with Library.open(tmp_path / "s", bundle, mode="w", create=True,
                      commit_every_windows=10) as lib:
        assert lib.bundle is bundle
        assert np.array_equal(lib.store.codes, np.zeros((0, 8), np.uint8))

"""Every storage implementation against the storage contract (tests/store_contract.py).

Add an implementation by adding a factory to IMPLEMENTATIONS: it takes a directory,
bits and fingerprint and returns an open, empty, writable store.
"""

from __future__ import annotations

import pytest
from store_contract import CHECKS

from cvahash.store.code_store import CodeStore


def _code_store(directory, bits, fingerprint):
    return CodeStore.create(directory, bits, fingerprint)


def _archive(directory, bits, fingerprint):
    """The network archive (embedded chDB) behind the same interface."""
    pytest.importorskip("chdb")
    from cvahash.archive.storage import ArchiveStore

    return ArchiveStore.open(directory, bits, fingerprint)


IMPLEMENTATIONS = {"code_store": _code_store, "archive": _archive}


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("make", IMPLEMENTATIONS.values(), ids=IMPLEMENTATIONS.keys())
def test_contract(make, check, tmp_path):
    check(make, tmp_path)

"""`make demo` end to end, short: the shipped bundle, a 3-minute field recording, five
queries. Runtime-side only (no torch needed), so it also guards the demo on CI."""

from __future__ import annotations

import re
from pathlib import Path

from cvahash.model.bundle import check_bundle

REPO = Path(__file__).resolve().parent.parent


def test_shipped_demo_bundle_is_intact():
    manifest = check_bundle(REPO / "tests" / "data" / "demo-bundle")
    assert manifest["bits"] == 64 and manifest["precision"] == "int8"


def test_demo_runs_end_to_end(tmp_path, capsys):
    from cvahash.export.demo import main

    assert main(["--out", str(tmp_path), "--minutes", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("precision@10 = ") == 5
    assert re.search(r"mean precision@10 over 5 queries: [0-9.]+ \(chance [0-9.]+\)", out)
    assert (tmp_path / "store").is_dir()

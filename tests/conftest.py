"""Fixtures shared by several test modules.

- ``tiny_bundle``: a tiny untrained CLAP + hashing heads exported to an fp32 bundle with
  the workstation toolchain, built once per session (about 15 s; skipped without torch).
- Every test runs with its own record of verified bundle files
  (``$CVAHASH_CACHE_DIR`` under the session's temporary folder), so no test writes to
  ``~/.cache`` or depends on what an earlier run verified.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CAPTIONS = [
    "a woodpecker drumming on a dead tree", "an owl hooting at night",
    "a frog chorus by the pond", "a wren singing a loud trill", "rain falling on leaves",
    "wind in the tall grass", "a crow cawing", "crickets chirping in the evening",
]


def make_tiny_bundle(root: Path) -> Path:
    """A tiny untrained CLAP + hashing heads exported as an fp32 bundle at root/bundle."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from cvahash.export.onnx.bundle_writer import export_run
    from cvahash.export.train.model import HashingModel, build_tiny_clap
    from cvahash.export.train.run import RunConfig, save_run
    from cvahash.export.train.tokenizer import train_caption_tokenizer

    tokenizer = train_caption_tokenizer(CAPTIONS * 4, vocab_size=300)
    model = HashingModel(build_tiny_clap(seed=0, vocab_size=len(tokenizer)), 64)
    save_run(root / "run", model, RunConfig(model="tiny", bits=64, lora_rank=0), tokenizer)
    export_run(root / "run", root / "bundle", "fp32", probe_limit=8)
    shutil.rmtree(root / "run")
    return root / "bundle"


def tiny_bundle_dir(tmp_path_factory) -> Path:
    """The session's tiny bundle, built on first use and shared by every test module."""
    root = tmp_path_factory.getbasetemp() / "cvahash-tiny-bundle"
    if not (root / "bundle" / "manifest.json").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        make_tiny_bundle(root)
    return root / "bundle"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    return tiny_bundle_dir(tmp_path_factory)




@pytest.fixture(autouse=True, scope="session")
def _private_verification_record(tmp_path_factory):
    """A fresh record of verified bundle files for the session (subprocesses inherit it)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CVAHASH_CACHE_DIR", str(tmp_path_factory.mktemp("cvahash-cache")))
    yield
    mp.undo()

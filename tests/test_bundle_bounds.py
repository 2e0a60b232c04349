"""Bundles that pass their checksums but would exhaust or escape a station are refused
by `bundle verify` / ModelBundle.open, naming what is wrong."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cvahash.errors import BundleError
from cvahash.model.bundle import MANIFEST_NAME, ModelBundle, check_bundle

DEMO = Path(__file__).parent / "data" / "demo-bundle"


@pytest.fixture
def bundle(tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(DEMO, dst)
    return dst


def _rewrite(root: Path, change) -> None:
    from cvahash.export.onnx.bundle_writer import write_manifest

    fields = json.loads((root / MANIFEST_NAME).read_text())
    for key in ("files", "fingerprint", "format_version"):
        fields.pop(key)
    change(fields)
    write_manifest(root, fields)


def test_the_demo_bundle_passes(bundle):
    assert check_bundle(bundle)["bits"] == 64


@pytest.mark.parametrize("change, message", [
    (lambda f: f["tokenizer"].update(max_length=10**9), "tokenizer.max_length"),
    (lambda f: f["frontend"].update(n_mels=100000), "frontend.n_mels"),
    (lambda f: f["frontend"].update(hop_length=1), "frontend.hop_length"),
    (lambda f: f["frontend"].update(max_length_s=1e9), "frontend.max_length_s"),
    (lambda f: f.update(bits=128), "graph outputs 64 values .* bits = 128"),
    (lambda f: f.update(bits=1024), "bits 1024 is outside"),
])
def test_hostile_manifest_values_are_refused(bundle, change, message):
    _rewrite(bundle, change)
    with pytest.raises(BundleError, match=message):
        ModelBundle.open(bundle)


def test_a_graph_linked_to_another_file_is_refused(bundle):
    (bundle / "text.onnx").unlink()
    (bundle / "text.onnx").symlink_to(bundle / "audio.onnx")
    _rewrite(bundle, lambda f: None)
    with pytest.raises(BundleError, match="text.onnx: must be a regular file"):
        check_bundle(bundle)


def test_external_data_outside_the_bundle_is_refused(bundle, tmp_path):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(bundle / "text.onnx"))
    init = model.graph.initializer[0]
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    entry = init.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    (bundle / "text.onnx").write_bytes(model.SerializeToString())
    _rewrite(bundle, lambda f: None)
    with pytest.raises(BundleError, match="external data '/etc/passwd'"):
        check_bundle(bundle)


def test_a_manifest_that_is_a_device_is_refused_without_reading_it(bundle):
    (bundle / MANIFEST_NAME).unlink()
    os.symlink("/dev/zero", bundle / MANIFEST_NAME)
    with pytest.raises(BundleError, match="manifest.json"):
        check_bundle(bundle)

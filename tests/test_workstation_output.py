"""Workstation commands: every flag explained with its default, library chatter muted,
quality changes reported with their sign in words."""

from __future__ import annotations

import argparse
import io
import logging
import warnings

import pytest

from cvahash.cli import build_parser


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", ["train", "export", "eval"])
def test_every_flag_has_a_help_line_with_its_default(command):
    for action in _subparser(command)._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{command} {name}: no help"
        if action.option_strings:  # options: the default, or that it is required
            assert "(default" in action.help or "(required)" in action.help, \
                f"{command} {name}: {action.help!r} does not give its default"


def test_library_future_warnings_are_muted_ours_are_not():
    from cvahash.commands.wording import mute_library_future_warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        mute_library_future_warnings()
        for module in ("transformers.modeling_utils", "torch.nn.modules", "cvahash.export"):
            exec("import warnings\nwarnings.warn('deprecated', FutureWarning)",
                 {"__name__": module})
    assert [str(w.message) for w in seen] == ["deprecated"]  # only cvahash's own


@pytest.mark.workstation
def test_quantising_prints_no_onnxruntime_pre_processing_advice(tmp_path):
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from cvahash.export.onnx.quantize import quantize_graph

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 16))
                                .astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
                              [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "f.onnx")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.WARNING)  # what the CLI shows by default
    try:
        quantize_graph(tmp_path / "f.onnx", tmp_path / "q.onnx", "dynamic-qint8")
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
    assert (tmp_path / "q.onnx").stat().st_size > 0
    assert "pre-processing" not in stream.getvalue() and "consider" not in stream.getvalue()


def test_bundle_verify_says_which_way_quality_moved():
    from cvahash.export.onnx.verify import VerifyReport, quality_change

    assert quality_change(-0.107) == "+10.7% better than torch"
    assert quality_change(0.03) == "-3.0% worse than torch"
    assert quality_change(0.0) == "same as torch"
    report = VerifyReport(bundle="b", fingerprint="f", precision="int8", bits=64, files={},
                          against="run", data="m", map10={"torch": 0.4, "bundle": 0.4428},
                          map_drop=-0.107)
    text = report.format()
    assert "+10.7% better than torch (fails when more than 2% worse)" in text
    assert "drop" not in text and "-10.7" not in text
    assert report.to_dict()["map_change"] == pytest.approx(0.107)

"""cvahash.export.onnx.graph_passes: the bicubic frame stretch as a 4-tap filter, against
PyTorch's interpolate and ONNX Runtime's Resize (independent implementations)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cvahash.export.onnx.graph_passes import cubic_taps, replace_cubic_resize  # noqa: E402


@pytest.mark.parametrize(("n_in", "n_out"), [(1001, 1024), (5, 8), (8, 8), (3, 17), (1, 4)])
def test_taps_match_torch_bicubic(n_in, n_out):
    x = np.random.default_rng(n_in).standard_normal((2, 1, n_in, 6))
    rows, w = cubic_taps(n_in, n_out)
    ours = (x[:, :, rows, :] * w[None, None, :, :, None]).sum(axis=3)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), (n_out, 6), mode="bicubic",
                                          align_corners=True).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-9)


def _resize_graph(path, n_in, n_out, width, mode="cubic", ctm="align_corners"):
    """input [B, 1, n_in, width] -> Relu -> Resize to [B, 1, n_out, width] -> Neg."""
    # Sizes computed at run time as the exporter does: the input's batch and channel
    # dimensions, then the new frame count and width.
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Shape", ["r"], ["shape"]),
        helper.make_node("Slice", ["shape", "s0", "s2"], ["bc"]),
        helper.make_node("Concat", ["bc", "hw"], ["sizes_rt"], axis=0),
        helper.make_node("Resize", ["r", "", "", "sizes_rt"], ["y"], mode=mode,
                         coordinate_transformation_mode=ctm, cubic_coeff_a=-0.75,
                         nearest_mode="floor", name="stretch"),
        helper.make_node("Neg", ["y"], ["out"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([2], np.int64), "s2"),
        numpy_helper.from_array(np.array([n_out, width], np.int64), "hw"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1, n_in, width])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", 1, n_out, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


def test_resize_becomes_taps_with_the_same_output(tmp_path):
    path = tmp_path / "g.onnx"
    _resize_graph(path, 1001, 1024, 8)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 1, 1001, 8)) * 20).astype(np.float32)
    before = _run(path, x)
    assert replace_cubic_resize(path, x[:2]) == 1
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Resize" not in ops and "Gather" in ops
    after = _run(path, x)  # batch 3: the rewrite does not fix the batch size
    assert after.shape == before.shape
    ref = -torch.nn.functional.interpolate(torch.from_numpy(np.maximum(x, 0)), (1024, 8),
                                           mode="bicubic", align_corners=True).numpy()
    # closer to PyTorch than ONNX Runtime's own Resize (float32 source positions)
    assert np.abs(after - ref).max() <= np.abs(before - ref).max() + 1e-6
    assert np.abs(after - before).max() <= 2e-4 * np.abs(x).max()


@pytest.mark.parametrize(("mode", "ctm", "n_out", "width_out"), [
    ("linear", "align_corners", 1024, 8),  # not cubic
    ("cubic", "half_pixel", 1024, 8),  # other coordinates
])
def test_other_resizes_are_left_alone(tmp_path, mode, ctm, n_out, width_out):
    path = tmp_path / "g.onnx"
    _resize_graph(path, 100, n_out, width_out, mode=mode, ctm=ctm)
    x = np.random.default_rng(1).standard_normal((2, 1, 100, 8)).astype(np.float32)
    data = path.read_bytes()
    assert replace_cubic_resize(path, x) == 0
    assert path.read_bytes() == data


def test_ort_optimized_graph_is_kept_when_identical(tmp_path):
    from cvahash.export.onnx.graph_passes import save_ort_optimized

    path = tmp_path / "g.onnx"
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["out"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", 8])], [w, b])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    feeds = [{"x": rng.standard_normal((3, 8)).astype(np.float32)} for _ in range(3)]
    before = [_run_feed(path, f) for f in feeds]
    assert save_ort_optimized(path, feeds)
    assert [n.op_type for n in onnx.load(str(path)).graph.node] != ["MatMul", "Add", "Relu"]
    for f, want in zip(feeds, before, strict=True):
        np.testing.assert_array_equal(_run_feed(path, f), want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx"]  # no leftovers


def _run_feed(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]

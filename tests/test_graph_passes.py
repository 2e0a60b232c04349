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


def _windowed_graph(path, width=4, frames=8):
    """input [B, frames, width] -> zero Pad to a multiple of 4 frames (computed from the
    shape at run time, as the exporter writes HTSAT's padding) -> Reshape to
    [B * frames / 4, 4, width] (target computed from Shape) -> + a [4, 4]-shaped mask
    built from Range/Equal/Where over the window length -> MatMul with it -> Reshape
    back to [B, frames, width]. Numpy reference: `_windowed_reference`."""
    c = {
        "i0": np.array([0], np.int64), "i1": np.array([1], np.int64),
        "four": np.array(4, np.int64), "minus_big": np.array(-100.0, np.float32),
        "zero_f": np.array(0.0, np.float32), "zero_i": np.array(0, np.int64),
        "one_i": np.array(1, np.int64), "ax0": np.array([0], np.int64),
        "ax1": np.array([1], np.int64), "zeros4": np.zeros(4, np.int64),
        "tail": np.array([4, width], np.int64), "mid": np.array([frames, width], np.int64),
    }
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "i0"], ["b"], axis=0),
        helper.make_node("Gather", ["shape", "i1"], ["f"], axis=0),
        # pads = [0, 0, 0, 0, (4 - f % 4) % 4, 0] -> all zero for a multiple of 4
        helper.make_node("Mod", ["f", "four"], ["fm"]),
        helper.make_node("Sub", ["four", "fm"], ["fs"]),
        helper.make_node("Mod", ["fs", "four"], ["pad_f"]),
        helper.make_node("Concat", ["zeros4", "pad_f", "i0"], ["pads"], axis=0),
        helper.make_node("Pad", ["x", "pads"], ["xp"]),
        # target [B * f / 4, 4, width]
        helper.make_node("Mul", ["b", "f"], ["bf"]),
        helper.make_node("Div", ["bf", "four"], ["nw"]),
        helper.make_node("Concat", ["nw", "tail"], ["target"], axis=0),
        helper.make_node("Reshape", ["xp", "target"], ["win"]),
        # mask[i, j] = 0 where i == j else -100, over the window length 4 from the shape
        helper.make_node("Shape", ["win"], ["wshape"]),
        helper.make_node("Gather", ["wshape", "one_i"], ["wl"], axis=0),
        helper.make_node("Range", ["zero_i", "wl", "one_i"], ["r"]),
        helper.make_node("Unsqueeze", ["r", "ax0"], ["rr"]),
        helper.make_node("Unsqueeze", ["r", "ax1"], ["rc"]),
        helper.make_node("Sub", ["rc", "rr"], ["d"]),
        helper.make_node("Equal", ["d", "zero_i"], ["eq"]),
        helper.make_node("Where", ["eq", "zero_f", "minus_big"], ["mask"]),
        helper.make_node("MatMul", ["mask", "win"], ["mixed"]),
        helper.make_node("Concat", ["b", "mid"], ["back"], axis=0),
        helper.make_node("Reshape", ["mixed", "back"], ["out"]),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in c.items()]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", frames, width])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", frames, width])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def _windowed_reference(x):
    b, f, w = x.shape
    mask = np.where(np.eye(4, dtype=bool), 0.0, -100.0)
    return (mask @ x.reshape(b * f // 4, 4, w).astype(np.float64)).reshape(b, f, w)


def test_shape_arithmetic_is_folded_for_every_batch(tmp_path):
    from cvahash.export.onnx.graph_passes import fold_batch_independent

    path = tmp_path / "g.onnx"
    _windowed_graph(path)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((n, 8, 4)).astype(np.float32) for n in (1, 2, 5)]
    for x in xs:
        np.testing.assert_allclose(_run(path, x), _windowed_reference(x), rtol=1e-5, atol=1e-4)
    counts = fold_batch_independent(path, xs[0])
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    # the mask and the pads are constants, the zero Pad is gone, the batch-dependent
    # Reshape targets keep -1 for the batch
    assert counts["pads_removed"] == 1 and counts["reshapes"] == 2
    assert "Pad" not in ops and "Where" not in ops and "Range" not in ops and "Shape" not in ops
    assert sorted(ops) == ["MatMul", "Reshape", "Reshape"]
    assert counts["nodes_removed"] == 23 - 3
    for x in xs:  # batch sizes it never saw
        np.testing.assert_allclose(_run(path, x), _windowed_reference(x), rtol=1e-5, atol=1e-4)


def test_graph_without_shape_arithmetic_is_left_alone(tmp_path):
    from cvahash.export.onnx.graph_passes import fold_batch_independent

    path = tmp_path / "g.onnx"
    _resize_graph(path, 100, 120, 8, mode="linear")  # its sizes depend on the batch
    data = path.read_bytes()
    x = np.random.default_rng(4).standard_normal((2, 1, 100, 8)).astype(np.float32)
    counts = fold_batch_independent(path, x)
    assert set(counts.values()) == {0}
    assert path.read_bytes() == data

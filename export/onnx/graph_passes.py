"""Rewrites of exported graphs that keep what they compute and cost less to run.

`replace_cubic_resize`: HTSAT stretches the 1001-frame log-mel to 1024 frames with a
bicubic ``Resize`` (``align_corners``, a = -0.75) before it cuts the spectrogram into
an image. For the fixed input size of a bundle that is a fixed 4-tap filter per output
row, so the node becomes ``Gather`` (the 4 source rows of every output row), ``Mul``
(their weights) and ``ReduceSum``: the same numbers up to float rounding, without ONNX
Runtime's general cubic resampler (5-6 % of the int8 audio graph's time on one core,
docs/benchmarks/bundle.md, run 5).

`save_ort_optimized`: ONNX Runtime's hardware-independent graph optimisations applied
once at export and saved into int8 graphs (which run on the CPU provider; fp16/fp32
bundles may go to a GPU provider and are left alone), so creating a session skips
them (session creation of the full-size int8 graphs: text 450 -> 271 ms, audio
635 -> 188 ms; docs/benchmarks/bundle.md, run 5). The manifest records it
(``graphs.<branch>.ort_optimized``) and `ModelBundle` then asks ONNX Runtime only for the basic
level (text) or the CPU-specific layout level (audio).

The Resize rewrite is checked before it is kept: the graph is run with the Resize's input and
output as extra outputs on a probe input, and the filter applied to that input must
give that output to within `REL_TOL` of the input's largest magnitude; otherwise the
graph is left as it was. (ONNX Runtime computes the source positions in float32, so its
Resize is off PyTorch's by up to 6e-5 of the range at 1001 -> 1024 frames; the filter's
float64 positions are closer to PyTorch than ONNX Runtime is.) The caller's agreement
checks against PyTorch (verify.py, quantize.py) then run on the result.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

REL_TOL = 2e-4  # of max |input|


def cubic_taps(n_in: int, n_out: int, a: float = -0.75) -> tuple[np.ndarray, np.ndarray]:
    """Source rows int64 [n_out, 4] and weights float64 [n_out, 4] of a bicubic
    resize of one axis from n_in to n_out samples with ``align_corners`` (PyTorch's
    ``interpolate(mode="bicubic", align_corners=True)``, ONNX ``Resize`` cubic with
    ``coordinate_transformation_mode="align_corners"``): rows outside the input are
    clamped to its edges."""
    if n_out < 2 or n_in < 1:
        raise ValueError(f"cubic_taps: cannot resize {n_in} -> {n_out} samples")
    x = np.arange(n_out, dtype=np.float64) * ((n_in - 1) / (n_out - 1))
    x0 = np.floor(x)
    t = x - x0
    d = np.stack([t + 1, t, 1 - t, 2 - t], axis=1)  # distance to taps x0-1 .. x0+2
    near = ((a + 2) * d - (a + 3)) * d * d + 1  # |d| <= 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a  # 1 < |d| < 2
    w = np.where(d <= 1, near, far)
    rows = np.clip(x0[:, None].astype(np.int64) + np.arange(-1, 3), 0, n_in - 1)
    return rows, w


def _probe_shapes(model, names: list[str], feeds: dict) -> dict[str, np.ndarray]:
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for n in names:
        if n not in have:
            probe.graph.output.append(onnx.ValueInfoProto(name=n))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, feeds), strict=True))


def replace_cubic_resize(path: str | Path, probe_input: np.ndarray) -> int:
    """Rewrites ``path`` in place; returns the number of Resize nodes replaced.

    Replaces every cubic, ``align_corners`` Resize of a 4-D tensor that changes only
    axis 2 (frames), with a 4-tap Gather/Mul/ReduceSum filter for the sizes seen on
    ``probe_input`` (the graph's only input, float32). The input's sizes are fixed by
    the bundle's front-end, so the filter holds for every input the bundle accepts."""
    import onnx
    from onnx import helper, numpy_helper

    path = Path(path)
    model = onnx.load(str(path))
    graph = model.graph

    def attrs(node):
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    candidates = []
    for node in graph.node:
        if node.op_type != "Resize":
            continue
        at = attrs(node)
        if (at.get("mode") == b"cubic" and at.get("coordinate_transformation_mode") ==
                b"align_corners" and not at.get("exclude_outside", 0)):
            candidates.append(node)
    if not candidates:
        return 0
    feeds = {graph.input[0].name: probe_input}
    names = [n.input[0] for n in candidates] + [n.output[0] for n in candidates]
    values = _probe_shapes(model, names, feeds)
    replaced = 0
    for node in candidates:
        x, y = values[node.input[0]], values[node.output[0]]
        if x.ndim != 4 or y.ndim != 4 or x.shape[:2] != y.shape[:2] or x.shape[3] != y.shape[3]:
            log.info("graph pass: %s resizes %s -> %s; left as it is", node.name, x.shape, y.shape)
            continue
        a = float(attrs(node).get("cubic_coeff_a", -0.75))
        rows, w = cubic_taps(x.shape[2], y.shape[2], a)
        w32 = w.astype(np.float32)
        mine = (x[:, :, rows, :] * w32[None, None, :, :, None]).sum(axis=3)
        diff = float(np.abs(mine - y).max())
        if not diff <= REL_TOL * max(1.0, float(np.abs(x).max())):
            log.info("graph pass: %s differs from its 4-tap filter by %g; left as it is",
                     node.name, diff)
            continue
        base = node.name or node.output[0]
        idx_name, w_name, shape_name = base + "/taps", base + "/tap_weights", base + "/tap_shape"
        gathered, shaped, weighted = base + "/gathered", base + "/taps4", base + "/weighted"
        graph.initializer.extend([
            numpy_helper.from_array(rows.reshape(-1), idx_name),
            numpy_helper.from_array(w32[:, :, None], w_name),
            numpy_helper.from_array(np.array([0, 0, y.shape[2], 4, x.shape[3]], np.int64),
                                    shape_name),
        ])
        axes_name = base + "/sum_axes"
        graph.initializer.append(numpy_helper.from_array(np.array([3], np.int64), axes_name))
        new = [
            helper.make_node("Gather", [node.input[0], idx_name], [gathered], axis=2,
                             name=base + "/Gather"),
            helper.make_node("Reshape", [gathered, shape_name], [shaped], name=base + "/Reshape"),
            helper.make_node("Mul", [shaped, w_name], [weighted], name=base + "/Mul"),
            helper.make_node("ReduceSum", [weighted, axes_name], [node.output[0]], keepdims=0,
                             name=base + "/ReduceSum"),
        ]
        at = list(graph.node).index(node)
        graph.node.remove(node)
        for i, n in enumerate(new):
            graph.node.insert(at + i, n)
        log.info("graph pass: %s (%s -> %s frames) is now a 4-tap filter (max diff %.2g)",
                 node.name, x.shape[2], y.shape[2], diff)
        replaced += 1
    if replaced:
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return replaced


# ONNX Runtime's optimisation level saved into the bundle's graphs. "Extended" fusions
# (attention, LayerNorm, Gelu, MatMul + quantisation into contrib ops) do not depend on
# the CPU; the layout level ("all": NCHWc blocks sized for the vector width) does, so
# the station still applies that one itself.
SAVED_ORT_LEVEL = "extended"


def save_ort_optimized(path: str | Path, feeds) -> bool:
    """Rewrites ``path`` with ONNX Runtime's extended-level optimisations applied and
    saved, so a station skips them when it creates the session (cold start); returns
    True if kept. Kept only when the saved graph gives bit-identical logits to the
    original on every feed dict in ``feeds`` (both run through ONNX Runtime)."""
    import onnxruntime as ort

    path = Path(path)
    saved = path.with_name(path.stem + ".ort-extended.onnx")

    def session(p: Path, level, out: Path | None = None):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        options.graph_optimization_level = level
        if out is not None:
            options.optimized_model_filepath = str(out)
        return ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])

    level = ort.GraphOptimizationLevel
    try:
        original = session(path, level.ORT_ENABLE_ALL)
        session(path, level.ORT_ENABLE_EXTENDED, saved)
        optimized = session(saved, level.ORT_ENABLE_BASIC)
        for f in feeds:
            a, b = original.run(None, f)[0], optimized.run(None, f)[0]
            if a.shape != b.shape or not np.array_equal(a, b):
                log.info("graph pass: %s optimised by ONNX Runtime differs (max %g); left "
                         "as it is", path.name, float(np.abs(a - b).max()) if a.shape == b.shape
                         else float("inf"))
                return False
        del original, optimized
        saved.replace(path)
        log.info("graph pass: %s saved with ONNX Runtime's extended optimisations", path.name)
        return True
    finally:
        saved.unlink(missing_ok=True)


# --- shape arithmetic folded for every batch size ----------------------------------------

SHAPE_FOLD_ATOL = 1e-5  # of max |output|: folding may reorder float additions of masks


def _shape_derived(graph) -> set[str]:
    """Tensors whose values come from constants and the *shapes* of the graph's inputs
    only (through ``Shape``/``Size`` nodes), never from the inputs' values."""
    data = {i.name for i in graph.input}
    for node in graph.node:  # the exporter writes nodes in topological order
        if node.op_type in ("Shape", "Size"):
            continue
        if any(i in data for i in node.input if i):
            data.update(o for o in node.output if o)
    derived = set()
    for node in graph.node:
        if node.op_type != "Constant" and not any(o in data for o in node.output):
            derived.update(o for o in node.output if o)
    return derived


def _prune(graph) -> int:
    """Drops nodes (and initializers) nothing reads; returns the number of nodes dropped."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            for a in node.attribute:  # If/Loop bodies read outer names too
                for body in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    needed.update(i for n in body.node for i in n.input)
    dropped = len(graph.node) - len(keep)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    unused = [t for t in graph.initializer if t.name not in needed]
    for t in unused:
        graph.initializer.remove(t)
    return dropped


def fold_batch_independent(path: str | Path, probe_input: np.ndarray) -> dict[str, int]:
    """Rewrites ``path`` in place: shape arithmetic that gives the same values for every
    batch size becomes constants. Returns counts (``constants``, ``reshapes``,
    ``pads_removed``, ``nodes_removed``), all 0 when the graph is left as it was.

    The TorchScript exporter computes every reshape target, HTSAT's shifted-window
    attention masks and its (zero) padding from ``Shape`` nodes at run time, on each
    call: over 2,000 small nodes in the full-size audio graph. Each tensor derived only
    from constants and input shapes (`_shape_derived`) that feeds real work is computed
    on a probe at batch 1 and batch 3. Equal at both: it becomes an initializer. A
    ``Reshape`` target whose result differs in one dimension only (the batch-dependent
    one) becomes the result's shape at batch 1 with -1 there. A ``Pad`` whose pads are
    all zero is dropped. The graph is kept only if it gives the outputs of the original
    at batch 1 and 3 (to within `SHAPE_FOLD_ATOL` of their range); the agreement checks
    against PyTorch follow.
    """
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    model = onnx.load(str(path))
    graph = model.graph
    zero = {"constants": 0, "reshapes": 0, "pads_removed": 0, "nodes_removed": 0}
    if len(graph.input) != 1:
        return zero
    derived = _shape_derived(graph)
    frontier: dict[str, list] = {}
    for node in graph.node:
        if any(o in derived for o in node.output):
            continue
        for k, i in enumerate(node.input):
            if i in derived:
                frontier.setdefault(i, []).append((node, k))
    if not frontier:
        return zero
    # For a reshape target, the shape the Reshape produces (the target may hold -1 or 0).
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    reshaped = {}
    for name, users in frontier.items():
        if all(n.op_type == "Reshape" and k == 1 for n, k in users):
            reshaped[name] = name + "/probe_reshaped_shape"
            probe.graph.node.append(onnx.helper.make_node(
                "Shape", [users[0][0].output[0]], [reshaped[name]]))
    names = sorted(frontier) + sorted(reshaped.values()) + [o.name for o in graph.output]
    x = np.asarray(probe_input[:1], dtype=np.float32)
    feed_name = graph.input[0].name
    one = _probe_shapes(probe, names, {feed_name: x})
    three = _probe_shapes(probe, names, {feed_name: np.concatenate([x, x, x])})
    del probe
    counts = dict(zero)
    for name in sorted(frontier):
        a, b = one[name], three[name]
        users = frontier[name]
        if a.shape == b.shape and np.array_equal(a, b):
            value = a
        elif name in reshaped and one[reshaped[name]].shape == three[reshaped[name]].shape \
                and int((one[reshaped[name]] != three[reshaped[name]]).sum()) == 1:
            # the shape produced at batch 1, with -1 for the one entry the batch changes
            sa, sb = one[reshaped[name]], three[reshaped[name]]
            value = np.where(sa != sb, -1, sa).astype(np.int64)
            counts["reshapes"] += 1
        else:
            continue
        const = name + "/folded"
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), const))
        for node, k in users:
            node.input[k] = const
        counts["constants"] += 1
    # Pads of zero (HTSAT pads to a multiple of the window size, a no-op for its input).
    inits = {t.name: t for t in graph.initializer}
    for node in list(graph.node):
        if node.op_type != "Pad" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if np.any(numpy_helper.to_array(inits[node.input[1]])):
            continue
        out, src = node.output[0], node.input[0]
        if out in {o.name for o in graph.output}:
            continue
        for other in graph.node:
            for k, i in enumerate(other.input):
                if i == out:
                    other.input[k] = src
        graph.node.remove(node)
        counts["pads_removed"] += 1
    counts["nodes_removed"] = _prune(graph) + counts["pads_removed"]
    if not counts["constants"]:
        return zero
    onnx.checker.check_model(model)
    outs = [o.name for o in graph.output]
    for feed, before in ((x, one), (np.concatenate([x, x, x]), three)):
        after = _probe_shapes(model, outs, {feed_name: feed})
        for o in outs:
            ref = before[o]
            if after[o].shape != ref.shape or not (
                    np.abs(after[o] - ref).max() <= SHAPE_FOLD_ATOL * max(1.0, np.abs(ref).max())):
                log.info("graph pass: folding shape arithmetic changes %s; left as it is", o)
                return zero
    onnx.save(model, str(path))
    log.info("graph pass: %d shape tensors folded (%d reshapes), %d zero pads dropped, %d nodes "
             "fewer", counts["constants"], counts["reshapes"], counts["pads_removed"],
             counts["nodes_removed"])
    return counts


"""Evaluate a run: binary Hamming vs continuous cosine retrieval on a manifest split.

For each direction (text->audio: every caption queries every clip; audio->text: every clip
queries every caption) and each K in (1, 5, 10, 20) we report mAP@K and P@K for

- ``binary``: Hamming distance between the heads' codes (bit = logit > 0);
- ``continuous``: cosine similarity of the same encoders' projected features (with LoRA,
  the tuned encoders);
- ``two_stage``: Hamming top-``rerank_depth`` re-ranked by cosine;
- ``weighted`` (text->audio only): Hamming top-``rerank_depth`` (at least the largest K)
  re-ranked by the query-weighted distance of the text logits, with the station's own
  function (`cvahash.kernel.weighted.rerank`, as ``cvahash search`` orders text hits);
- ``continuous_base`` (LoRA runs only): cosine of the encoders *without* the adapters, to
  show how hashing changed the continuous embeddings.

Relevance: a caption and a clip are relevant when they share a label; if the manifest
has no labels at all, each caption is relevant to its own clip only. Definitions of the
metrics are in ``cvahash.export.train.metrics``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ...kernel.weighted import rerank as weighted_order
from ...model.frontend import FrontendParams
from . import metrics
from .data import log_mel_features, read_manifest, select_split
from .device import encode_all, pick_device, quiet_transformers
from .run import load_run
from .tokenizer import tokenize

KS = (1, 5, 10, 20)


def _scores(text_codes, audio_codes, text_emb, audio_emb, relevant, depth, ks,
            query_logits=None):
    """{binary, continuous, two_stage} scores for queries (rows of relevant) -> items, and
    ``weighted`` when the queries' logits are given."""
    ham = metrics.hamming_distances(text_codes, audio_codes)
    cos = metrics.cosine_similarities(text_emb, audio_emb)
    by_ham = metrics.rank_by_distance(ham)
    two = metrics.rerank(by_ham[:, :depth], cos)
    out = {"binary": metrics.retrieval_scores(by_ham, relevant, ks),
           "continuous": metrics.retrieval_scores(metrics.rank_by_similarity(cos), relevant, ks),
           "two_stage": metrics.retrieval_scores(two, relevant, ks)}
    if query_logits is not None:
        ranking = weighted_ranking(query_logits, audio_codes, max(depth, max(ks)), ham, by_ham)
        out["weighted"] = metrics.retrieval_scores(ranking, relevant, ks)
    return out


def weighted_ranking(query_logits, item_codes, depth: int, ham=None, by_ham=None) -> np.ndarray:
    """Item ids (nq, min(depth, items)) per query as the station ranks a text search: the
    ``depth`` Hamming-nearest items (ties by id) ordered by (query-weighted distance of the
    query's logits, Hamming distance, id). ``item_codes``: bool/{0,1} (nd, bits)."""
    logits = np.asarray(query_logits, np.float32)
    items = np.asarray(item_codes) > 0
    if ham is None:
        ham = metrics.hamming_distances(logits > 0, items)
    if by_ham is None:
        by_ham = metrics.rank_by_distance(ham)
    packed = np.packbits(items, axis=1)
    cands = by_ham[:, :depth]
    out = np.empty_like(cands)
    for i, cand in enumerate(cands):
        out[i] = cand[weighted_order(logits[i], packed[cand], ham[i, cand])]
    return out


def evaluate_run(run_dir: str | Path, manifest: str | Path, *, split: str = "test",
                 device: str = "auto", cache_dir: str | Path | None = None,
                 rerank_depth: int = 100, ks=KS, progress: bool = True) -> dict:
    """Scores of the run in ``run_dir`` on ``split`` of ``manifest`` (see module docstring)."""
    quiet_transformers()
    dev = pick_device(device)
    model, config, tokenizer = load_run(run_dir)
    model.to(dev).eval()
    entries = select_split(read_manifest(manifest), split)
    if len(entries) < 2:
        raise ValueError(f"{manifest}: split {split!r} has {len(entries)} clips; need at least 2")
    params = FrontendParams.from_dict(config.frontend)
    cache_dir = cache_dir or Path(manifest).parent / ".cvahash-cache"
    # Evaluation crops long clips with a fixed seed (0), whatever the training seed was.
    feats = log_mel_features(entries, cache_dir, params, seed=0, progress=progress)
    ids, mask = tokenize(tokenizer, [e.caption for e in entries], config.text_max_length,
                         config.text_padding)
    t_emb, a_emb = encode_all(model, feats, ids, mask, dev, progress=progress)
    with torch.no_grad():
        t_log = model.text_head(t_emb).cpu().numpy()
        a_log = model.audio_head(a_emb).cpu().numpy()
    t_emb, a_emb = t_emb.cpu().numpy(), a_emb.cpu().numpy()

    labels = [e.labels for e in entries]
    if any(labels):
        rel = metrics.relevance_matrix(labels, labels)
    else:
        rel = np.eye(len(entries), dtype=bool)
    t_codes, a_codes = t_log > 0, a_log > 0
    ap_bin = metrics.average_precision_at_k(
        metrics.rank_by_distance(metrics.hamming_distances(t_codes, a_codes)), rel, 10)
    ap_cont = metrics.average_precision_at_k(
        metrics.rank_by_similarity(metrics.cosine_similarities(t_emb, a_emb)), rel, 10)
    ap_weighted = metrics.average_precision_at_k(
        weighted_ranking(t_log, a_codes, max(rerank_depth, max(ks))), rel, 10)
    result = {
        "run": str(run_dir), "bits": config.bits, "objective": config.objective,
        "head": config.head, "lora_rank": config.lora_rank, "split": split,
        "n_clips": len(entries), "rerank_depth": rerank_depth,
        "text_to_audio": _scores(t_codes, a_codes, t_emb, a_emb, rel, rerank_depth, ks,
                                 query_logits=t_log),
        "audio_to_text": _scores(a_codes, t_codes, a_emb, t_emb, rel.T, rerank_depth, ks),
        "bit_balance": float(np.abs(np.concatenate([t_codes, a_codes]).mean(0) - 0.5).mean()),
        # text->audio AP@10 per query (NaN: no relevant clip) and the binary/continuous
        # ratio of their means with a paired bootstrap interval over queries
        "per_query_ap10": {"binary": [None if np.isnan(x) else round(float(x), 6)
                                      for x in ap_bin],
                           "continuous": [None if np.isnan(x) else round(float(x), 6)
                                          for x in ap_cont],
                           "weighted": [None if np.isnan(x) else round(float(x), 6)
                                        for x in ap_weighted]},
        "ratio_map10": ratio_interval(ap_cont, ap_bin),
        # the same for the weighted re-ranking (text logits) against continuous
        "ratio_weighted_map10": ratio_interval(ap_cont, ap_weighted),
    }
    if config.lora_rank and hasattr(model.clap, "disable_adapter"):
        with model.clap.disable_adapter():
            bt, ba = encode_all(model, feats, ids, mask, dev)
        bt, ba = bt.cpu().numpy(), ba.cpu().numpy()
        result["text_to_audio"]["continuous_base"] = metrics.retrieval_scores(
            metrics.rank_by_similarity(metrics.cosine_similarities(bt, ba)), rel, ks)
        result["audio_to_text"]["continuous_base"] = metrics.retrieval_scores(
            metrics.rank_by_similarity(metrics.cosine_similarities(ba, bt)), rel.T, ks)
    return result


def ratio_interval(ap_reference: np.ndarray, ap_candidate: np.ndarray,
                   confidence: float = 0.95) -> dict | None:
    """mean(candidate) / mean(reference) over the queries both scored, with a 95 % paired
    percentile bootstrap interval (2000 resamples, seed 0); None when undefined."""
    r = metrics.map_change_interval(ap_reference, ap_candidate, confidence=confidence)
    if r is None:
        return None
    return {"ratio": round(1 + r.change, 4), "low": round(1 + r.low, 4),
            "high": round(1 + r.high, 4), "queries": r.queries, "confidence": confidence}


def format_table(results: list[dict], ks=KS) -> str:
    """A plain-text table: one row per (run, direction, method)."""
    head = f"{'run':<28} {'bits':>4} {'dir':<4} {'method':<16}" + "".join(
        f" {'mAP@' + str(k):>7}" for k in ks) + "".join(f" {'P@' + str(k):>6}" for k in ks)
    lines = [head, "-" * len(head)]
    for r in results:
        name = Path(r["run"]).name[:28]
        for direction, short in (("text_to_audio", "t2a"), ("audio_to_text", "a2t")):
            for method, s in r[direction].items():
                lines.append(f"{name:<28} {r['bits']:>4} {short:<4} {method:<16}"
                             + "".join(f" {s[f'mAP@{k}']:>7.3f}" for k in ks)
                             + "".join(f" {s[f'P@{k}']:>6.3f}" for k in ks))
    return "\n".join(lines)


def plot_map_vs_bits(results: list[dict], path: str | Path, k: int = 10) -> Path:
    """PNG: text->audio mAP@k against bits, binary and continuous, one line per
    (objective, LoRA) group."""
    import matplotlib  # optional: the plots extra, only for this figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(f"{r['objective']} lora{r['lora_rank']}", []).append(r)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["bits"])
        bits = [r["bits"] for r in rs]
        line, = ax.plot(bits, [r["text_to_audio"]["binary"][f"mAP@{k}"] for r in rs], "o-",
                        label=f"{name} binary")
        ax.plot(bits, [r["text_to_audio"]["continuous"][f"mAP@{k}"] for r in rs], "s--",
                color=line.get_color(), label=f"{name} continuous")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bits")
    ax.set_ylabel(f"text->audio mAP@{k}")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_json(results: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(results if len(results) != 1 else results[0], indent=2) + "\n")
    return path

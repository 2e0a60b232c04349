"""Retrieval quality of CVA-Hash on the synthetic corpus: binary codes vs continuous embeddings.

    .venv/bin/python bench/quality.py --out /tmp/cvahash-quality            # full grid
    .venv/bin/python bench/quality.py --out /tmp/q --n 300 --quick          # smoke run
    .venv/bin/python bench/quality.py --full-size-step                      # one LoRA step, 153M

1. generate the synthetic corpus (cvahash.export.synth.corpus), relevance = sharing a label;
2. pretrain a tiny CLAP from scratch with the ``clip`` objective (the stand-in foundation
   model: no pretrained weights here);
3. train CVA-Hash heads at each bit width, for each objective (crovca, contrastive,
   distill), without LoRA (heads only, on embeddings computed once) and with LoRA; with
   ``--head-extra N`` on the corpus's train split plus N more train-split clips of the same
   generator (``synth.corpus.extend_train_split``: training backgrounds and seen phrasings
   only, the clips the stand-in's pretraining pool renders);
4. evaluate each on the test split (``--split val test`` also on val, to choose settings
   without looking at test):
   text->audio mAP@10 with Hamming codes vs cosine of the same encoders, and the pretrained
   encoders' cosine (how hashing changed the continuous embeddings); the
   binary/continuous ratio with a 95 % paired bootstrap interval over the queries, and
   for LoRA runs also the ratio to the *pretrained* encoders' continuous mAP@10 (what the
   untuned model's embeddings find), with its interval;
   The station orders text hits by Hamming candidates re-ranked by the query-weighted
   distance (`cvahash.kernel.weighted`, docs/search.md); the "weighted" columns and
   ratio_weighted_vs_bits.png score that order (depth as the station's, 200), the plain
   columns pure Hamming;
5. baselines at each bit width: ``lsh`` (random hyperplanes on the shared projection) and
   ``itq`` (PCA + Iterative Quantisation on the train split's audio), no captions needed.

Prints a markdown table per split and writes results.json, table.md, map_vs_bits.png,
ratio_vs_bits.png and ratio_weighted_vs_bits.png in --out (``-val`` files for val).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path


def full_size_step(batch: int = 16, rank: int = 8) -> dict:
    """Time and peak memory of one LoRA training step of the full-size ClapConfig."""
    import torch
    from transformers import ClapModel

    from cvahash.export.train.losses import make_objective
    from cvahash.export.train.model import HashingModel, full_size_clap_config

    torch.manual_seed(0)
    model = HashingModel(ClapModel(full_size_clap_config()), bits=64)
    model.add_lora(rank)
    model.freeze_base()
    model.train()
    model.clap.eval()
    opt = torch.optim.AdamW([{"params": model.head_parameters(), "lr": 1e-3},
                             {"params": model.lora_parameters(), "lr": 1e-4}])
    ids = torch.randint(5, 50000, (batch, 77))
    mask = torch.ones_like(ids)
    feats = torch.randn(batch, 1, 1001, 64) * 20 - 40
    objective = make_objective("crovca")
    times = []
    for _ in range(2):  # the first step includes allocator warm-up; report both
        t0 = time.perf_counter()
        t, a = model(ids, mask, feats)
        loss = sum(objective(t, a).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    n_params = sum(p.numel() for p in model.clap.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params": n_params, "trainable": n_train, "batch": batch, "lora_rank": rank,
            "step_s": times,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/cvahash-quality")
    ap.add_argument("--n", type=int, default=1500, help="clips in the corpus")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--objectives", nargs="+", default=["crovca", "contrastive", "distill"])
    ap.add_argument("--hidden", type=json.loads, default={}, metavar="JSON",
                    help="heads' hidden width by objective, e.g. '{\"distill\": 256}' "
                         "(default: the larger of the projection size and the bits)")
    ap.add_argument("--head-extra", type=int, default=0, metavar="N",
                    help="train heads (and ITQ) on the corpus's train split plus N more "
                         "train-split clips (default 0: the corpus's own)")
    ap.add_argument("--split", choices=("val", "test"), nargs="+", default=["test"],
                    help="splits to evaluate on (default test; add val to choose settings "
                         "without test)")
    ap.add_argument("--lora", type=int, nargs="+", default=[0, 8], help="LoRA ranks (0 = none)")
    ap.add_argument("--lora-bits", type=int, nargs="+", default=None,
                    help="bit widths of the LoRA runs (default: all of --bits)")
    ap.add_argument("--pretrained", default=None, metavar="MODEL",
                    help="skip pretraining: use this base model instead (an `--objective clip` "
                         "run folder, a local CLAP folder, or a hub id such as "
                         "davidrrobinson/BioLingual)")
    ap.add_argument("--baselines", nargs="*", default=["lsh", "itq"],
                    help="caption-free hashing baselines per bit width (default lsh itq)")
    ap.add_argument("--clip-objective", choices=("clip", "supclip"), default="clip",
                    help="stand-in pretraining objective (supclip: captions sharing a call "
                         "label are positives)")
    ap.add_argument("--tiny-config", type=json.loads, default={},
                    help="JSON overrides of the tiny ClapConfig for the stand-in")
    ap.add_argument("--clip-batch", type=int, default=32)
    ap.add_argument("--clip-lr", type=float, default=2e-3)
    ap.add_argument("--clip-epochs", type=int, default=30)
    ap.add_argument("--head-epochs", type=int, default=60, help="heads-only runs")
    ap.add_argument("--lora-epochs", type=int, default=4, help="LoRA runs (1 head-only warm-up)")
    ap.add_argument("--loss", type=json.loads, default={}, metavar="JSON",
                    help="objective settings by objective, as JSON, e.g. "
                         "'{\"crovca\": {\"rate_weight\": 0.1}}' (default: each objective's own)")
    ap.add_argument("--quick", action="store_true", help="few epochs: checks the pipeline only")
    ap.add_argument("--full-size-step", action="store_true",
                    help="only time one LoRA step of the full-size (153M) ClapConfig")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    if args.full_size_step:
        print(json.dumps(full_size_step(), indent=2))
        return 0
    if args.quick:
        args.clip_epochs, args.head_epochs, args.lora_epochs = 3, 10, 2

    from cvahash.export.synth.corpus import generate_corpus
    from cvahash.export.train.evaluate import evaluate_run, format_table
    from cvahash.export.train.loop import TrainOptions, train
    from cvahash.export.train.run import RunConfig
    from cvahash.query.search import RERANK_DEPTH

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    manifest = out / "corpus" / "manifest.jsonl"
    if not manifest.exists():
        generate_corpus(out / "corpus", n=args.n, seed=args.seed,
                        workers=min(2, os.cpu_count() or 1))
    t_corpus = time.monotonic() - t_start
    print(f"corpus: {t_corpus:.0f}s", file=sys.stderr)

    head_manifest = manifest
    if args.head_extra:
        from cvahash.export.synth.corpus import extend_train_split

        t0 = time.monotonic()
        head_manifest = extend_train_split(out / "corpus", args.head_extra,
                                           workers=min(2, os.cpu_count() or 1))
        print(f"{args.head_extra} extra train clips: {time.monotonic() - t0:.0f}s",
              file=sys.stderr)
    splits = list(dict.fromkeys(args.split))

    def evaluate_splits(run_dir: Path, train_s: float) -> list[dict]:
        """The run scored on each split, in the station's re-rank depth."""
        rows = []
        for split in splits:
            r = evaluate_run(run_dir, manifest, split=split, progress=False,
                             rerank_depth=RERANK_DEPTH)
            r["train_s"] = train_s
            t2a = r["text_to_audio"]
            print(f"{run_dir.name} ({split}): binary {t2a['binary']['mAP@10']:.3f} "
                  f"continuous {t2a['continuous']['mAP@10']:.3f} ({train_s:.0f}s)",
                  file=sys.stderr)
            rows.append(r)
        return rows

    opts = TrainOptions(progress=sys.stderr.isatty(), embedding_cache={})
    clip_dir = Path(args.pretrained) if args.pretrained else out / "clip"
    clip_cfg = RunConfig(model="tiny", tiny_config=args.tiny_config,
                         objective=args.clip_objective, lora_rank=0, epochs=args.clip_epochs,
                         batch_size=args.clip_batch, lr_base=args.clip_lr, text_max_length=32,
                         seed=args.seed)
    t0 = time.monotonic()
    if not args.pretrained:
        train(clip_cfg, manifest, clip_dir, opts)
    t_clip = time.monotonic() - t0
    print(f"clip pretraining: {t_clip:.0f}s, {cpu_seconds():.0f} CPU-s so far", file=sys.stderr)
    if (clip_dir / "run.json").exists():  # our own clip run (not a plain CLAP checkpoint)
        clip_eval = evaluate_run(clip_dir, manifest, split=splits[0], progress=False)
        (out / "clip_eval.json").write_text(json.dumps(clip_eval, indent=1))
        print("pretrained continuous t2a mAP@10 "
              f"{clip_eval['text_to_audio']['continuous']['mAP@10']:.3f}", file=sys.stderr)

    results, timings = [], {"corpus_s": t_corpus, "clip_pretrain_s": t_clip}
    for rank in args.lora:
        for objective in args.objectives:
            for bits in args.bits:
                if rank and args.lora_bits and bits not in args.lora_bits:
                    continue
                name = f"{objective}-{bits}b-lora{rank}"
                cfg = RunConfig(model=args.pretrained or str(clip_dir), bits=bits,
                                objective=objective, head_hidden=args.hidden.get(objective),
                                lora_rank=rank, seed=args.seed, text_max_length=32,
                                epochs=args.lora_epochs if rank else args.head_epochs,
                                warmup_epochs=1 if rank else 0, batch_size=64,
                                lr_head=2e-3, lr_lora=5e-4,
                                loss=dict(args.loss.get(objective, {})))
                t0 = time.monotonic()
                train(cfg, head_manifest, out / name, opts)
                results += evaluate_splits(out / name, time.monotonic() - t0)
                save(out, results, timings, t_start)
    from cvahash.export.train.hyperplanes import fit_run

    for objective in args.baselines:
        for bits in args.bits:
            name = f"{objective}-{bits}b"
            cfg = RunConfig(model=args.pretrained or str(clip_dir), bits=bits,
                            objective=objective, lora_rank=0, seed=args.seed, text_max_length=32,
                            epochs=0, warmup_epochs=0)
            t0 = time.monotonic()
            fit_run(cfg, out / name, head_manifest if objective == "itq" else None,
                    TrainOptions(progress=False, resume=False))
            results += evaluate_splits(out / name, time.monotonic() - t0)
            save(out, results, timings, t_start)
    meta = save(out, results, timings, t_start)
    for split in splits:
        print(f"\n{split} split\n")
        print(markdown_table([r for r in results if r["split"] == split]))
    print(format_table(results), file=sys.stderr)
    print(json.dumps(meta, indent=1), file=sys.stderr)
    return 0


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (corpus workers)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def save(out: Path, results: list[dict], timings: dict, t_start: float) -> dict:
    """Write results.json, table.md and the plot now, so an interrupted run keeps its data."""
    import torch

    from cvahash.export.train.evaluate import plot_map_vs_bits

    add_pretrained_ratios(results)
    timings = dict(timings, wall_s=time.monotonic() - t_start, cpu_s=cpu_seconds())
    meta = {"argv": sys.argv, "machine": platform.platform(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "timings": timings,
            "load_avg_1m": os.getloadavg()[0],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (out / "results.json").write_text(json.dumps({"meta": meta, "runs": results}, indent=1))
    splits = list(dict.fromkeys(r["split"] for r in results))
    for split in splits:  # the first split's files keep the plain names
        part = [r for r in results if r["split"] == split]
        tail = "" if split == splits[0] else f"-{split}"
        (out / f"table{tail}.md").write_text(markdown_table(part) + "\n")
        plot_map_vs_bits(part, out / f"map_vs_bits{tail}.png")
        plot_ratio_vs_bits(part, out / f"ratio_vs_bits{tail}.png")
        plot_ratio_vs_bits(part, out / f"ratio_weighted_vs_bits{tail}.png",
                           key="ratio_pretrained_weighted_map10")
    return meta


def add_pretrained_ratios(results: list[dict]) -> None:
    """Give every run ``ratio_pretrained_map10``: its binary mAP@10 over the pretrained
    encoders' continuous mAP@10, paired bootstrap over the same queries. Heads-only and
    baseline runs use the frozen encoders, so theirs equals ``ratio_map10``; a LoRA run's
    own "continuous" is its tuned encoders, and this is the ratio to the untuned ones."""
    import numpy as np

    from cvahash.export.train.evaluate import ratio_interval

    def per_query(r: dict, kind: str) -> np.ndarray:
        return np.array([np.nan if x is None else x for x in r["per_query_ap10"][kind]],
                        dtype=float)

    for split in {r["split"] for r in results}:
        part = [r for r in results if r["split"] == split and "per_query_ap10" in r]
        frozen = next((r for r in part if not r["lora_rank"]), None)
        if frozen is None:
            continue
        reference = per_query(frozen, "continuous")
        for r in part:
            r["ratio_pretrained_map10"] = ratio_interval(reference, per_query(r, "binary"))
            if "weighted" in r["per_query_ap10"]:
                r["ratio_pretrained_weighted_map10"] = ratio_interval(
                    reference, per_query(r, "weighted"))


def plot_ratio_vs_bits(results: list[dict], path: Path,
                      key: str = "ratio_pretrained_map10") -> Path:
    """PNG: binary text->audio mAP@10 over the pretrained encoders' continuous mAP@10
    against bits, one line per (objective, LoRA) group, 95 % bootstrap intervals as error
    bars, the targets (0.95x at 64 bits, 1.0x at 128) marked. ``key``
    ``ratio_pretrained_weighted_map10``: the station's order (Hamming candidates re-ranked
    by the query-weighted distance) instead of plain Hamming."""
    import matplotlib  # optional: the plots extra, only for this figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict]] = {}
    for r in results:
        if r.get(key):
            lora = f"LoRA {r['lora_rank']}" if r["lora_rank"] else "heads only"
            if r["objective"] in ("lsh", "itq"):
                lora = "no captions"
            groups.setdefault(f"{r['objective']}, {lora}", []).append(r)
    colours = {"crovca": "tab:red", "contrastive": "tab:blue", "distill": "tab:purple",
               "itq": "tab:green",
               "lsh": "tab:grey"}  # one colour per objective; LoRA dashed
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = sorted(groups)
    for i, name in enumerate(names):
        rs = sorted(groups[name], key=lambda r: r["bits"])
        shift = 2 ** ((i - (len(names) - 1) / 2) * 0.03)  # side by side, not on top
        x = [r["bits"] * shift for r in rs]
        y = [r[key]["ratio"] for r in rs]
        low = [v - r[key]["low"] for v, r in zip(y, rs, strict=True)]
        high = [r[key]["high"] - v for v, r in zip(y, rs, strict=True)]
        dashed = "LoRA" in name
        colour = colours.get(rs[0]["objective"])
        ax.errorbar(x, y, yerr=[low, high], fmt="s--" if dashed else "o-", capsize=3,
                    markersize=4, linewidth=1.2, label=name, color=colour)
    ax.plot([64], [0.95], "k*", markersize=12, label="targets (64 b: 0.95x, 128 b: 1.0x)")
    ax.plot([128], [1.0], "k*", markersize=12)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks([16, 32, 64, 128], ["16", "32", "64", "128"])
    ax.set_xlabel("bits")
    ax.set_ylabel("binary / pretrained continuous mAP@10")
    split = results[0].get("split", "test")
    order = ("Hamming candidates re-ranked by the query-weighted distance"
             if "weighted" in key else "plain Hamming order")
    ax.set_title(f"text->audio, {split} split, {order}\n(95 % bootstrap intervals over "
                 "queries)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown_table(results: list[dict]) -> str:
    rows = [("| objective | LoRA | bits | binary mAP@10 | continuous mAP@10 | ratio | ratio 95% CI "
             "| pretrained cont. | ratio to pretrained (95% CI) | weighted mAP@10 "
             "| weighted ratio to pretrained (95% CI) | two-stage | a->t binary "
             "| a->t cont. | train s |"),
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        t, a = r["text_to_audio"], r["audio_to_text"]
        b, c = t["binary"]["mAP@10"], t["continuous"]["mAP@10"]
        base = t.get("continuous_base", t["continuous"])["mAP@10"]
        ci = r.get("ratio_map10")
        ci_text = f"{ci['low']:.2f}-{ci['high']:.2f}" if ci else "-"
        pre = r.get("ratio_pretrained_map10")
        pre_text = f"{pre['ratio']:.3f} ({pre['low']:.2f}-{pre['high']:.2f})" if pre else "-"
        wpre = r.get("ratio_pretrained_weighted_map10")
        w_text = f"{wpre['ratio']:.3f} ({wpre['low']:.2f}-{wpre['high']:.2f})" if wpre else "-"
        w_map = f"{t['weighted']['mAP@10']:.3f}" if "weighted" in t else "-"
        rows.append(f"| {r['objective']} | {r['lora_rank'] or '-'} | {r['bits']} | {b:.3f} | "
                    f"{c:.3f} | {b / c if c else float('nan'):.3f} | {ci_text} | "
                    f"{base:.3f} | {pre_text} | {w_map} | {w_text} | "
                    f"{t['two_stage']['mAP@10']:.3f} | "
                    f"{a['binary']['mAP@10']:.3f} | {a['continuous']['mAP@10']:.3f} | "
                    f"{r['train_s']:.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())

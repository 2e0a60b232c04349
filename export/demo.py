"""`make demo`: the main job end to end, on a field recording made here.

    python -m cvahash.export.demo [--out demo_out] [--minutes 120] [--retrain [--quick]]
        [--seed 7] [--background pink] [--heldout-queries] [--threads 0]

1. a model bundle: the tiny one the repository ships (tests/data/demo-bundle, made by
   this toolchain: see `--retrain`), or with `--retrain` a new one trained and exported
   here (synthetic corpus of 1000 clips -> the stand-in CLAP of
   cvahash.export.train.standin: calls re-rendered apart from their backgrounds and
   mixed over random training-only noise, label-anchored + supclip pretraining, a text
   stage with WordNet synonyms -> 64-bit distill heads on the corpus's train split and
   the pool's extra clips -> int8 ONNX bundle; about 25 minutes at one thread, `--quick` a
   few minutes with a near-chance result);
2. a two-hour field recording with known events (cvahash synth --soundscape; `--seed` and
   `--background stream` give one whose seed and background training never saw, and
   `--heldout-queries` queries with phrasings training captions never used);
3. `cvahash index` of that recording into a code store;
4. five text queries with `cvahash search`, each hit printed beside what was really
   playing in that window, and precision@10 against the known events (with the chance
   level: the share of windows that hold the queried call at all).

Every step is the same command a user runs; each is printed before it runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIPPED_BUNDLE = REPO / "tests" / "data" / "demo-bundle"
# Calls in the demo recording and the five queries typed for them (field-user words).
DEMO_CALLS = ["woodpecker_drumming", "owl_hooting", "tree_frog_croaking", "cricket_trill",
              "rising_whistle", "crow_cawing", "bullfrog_call", "wolf_howling"]


def cli(*args: str) -> int:
    from ..cli import main  # lazy: the CLI imports every command

    print(f"\n$ cvahash {' '.join(shlex.quote(a) for a in args)}", flush=True)
    return main(list(args))


# The retrain recipe (docs/benchmarks/quality.md runs 7 and 10): corpus size, extra training clips,
# noise bank and epochs, full and --quick (a few minutes' smoke run of the same path; its
# bundle is near chance).
RECIPE = {"clips": 1000, "epochs": 40, "extra": 2000, "noise": 400, "text_steps": 5000,
          "head_epochs": 60}
QUICK_RECIPE = {"clips": 100, "epochs": 1, "extra": 16, "noise": 8, "text_steps": 20,
                "head_epochs": 1}


def retrain(work: Path, seed: int = 0, quick: bool = False) -> Path:
    """Reproduce the shipped demo bundle: corpus, stand-in pretraining, heads, export."""
    from .train.standin import pretrain_standin  # lazy: torch

    recipe = QUICK_RECIPE if quick else RECIPE
    corpus = work / "corpus"
    if not (corpus / "manifest.jsonl").exists():
        if cli("synth", "--out", str(corpus), "--n", str(recipe["clips"]), "--seed", str(seed),
               "--format", "wav", "--force") != 0:
            raise SystemExit("demo: `cvahash synth` failed; see the message above")
    manifest = str(corpus / "manifest.jsonl")
    print(f"\n$ python bench/standin_pretrain.py --corpus {corpus} --out {work / 'standin'} "
          f"--epochs {recipe['epochs']} --extra {recipe['extra']} --noise {recipe['noise']} "
          f"--text-steps {recipe['text_steps']} --seed {seed}", flush=True)
    model, _ = pretrain_standin(Path(manifest), work / "standin", epochs=recipe["epochs"],
                                extra=recipe["extra"], noise=recipe["noise"],
                                text_steps=recipe["text_steps"], seed=seed,
                                log=sys.stderr)  # a line per epoch: 20 minutes otherwise silent
    heads_data = manifest
    if recipe["extra"]:  # the heads train on the pool's clips too (the same renders)
        if cli("synth", "--extend", str(corpus), "--extra", str(recipe["extra"])) != 0:
            raise SystemExit("demo: `cvahash synth --extend` failed; see the message above")
        heads_data = str(corpus / "manifest-extended.jsonl")
    steps = [
        ("train", "--model", str(model), "--objective", "distill", "--data", heads_data,
         "--bits", "64", "--head-hidden", "256", "--lora-rank", "0",
         "--epochs", str(recipe["head_epochs"]), "--warmup-epochs", "0", "--batch-size", "64",
         "--lr-head", "2e-3",
         "--max-text-length", "32", "--out", str(work / "hash-run"), "--seed", str(seed),
         "--no-resume", "--quiet"),
        ("export", str(work / "hash-run"), "--out", str(work / "bundle"), "--data", manifest,
         "--force"),
    ]
    for step in steps:
        if cli(*step) != 0:
            raise SystemExit(f"demo: `cvahash {step[0]}` failed; see the message above")
    return work / "bundle"


def window_labels(events: list[dict], start: float, end: float) -> list[str]:
    """Labels of the events that sound for at least half a second inside [start, end)."""
    return sorted({e["label"] for e in events
                   if min(end, e["end_s"]) - max(start, e["start_s"]) >= 0.5})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo_out", help="working folder (default demo_out)")
    ap.add_argument("--minutes", type=float, default=120.0, help="length of the recording")
    ap.add_argument("--retrain", action="store_true",
                    help="train and export a new bundle instead of the shipped one")
    ap.add_argument("--quick", action="store_true",
                    help="with --retrain: a tiny corpus and a few epochs (checks the path in "
                         "minutes; the bundle it makes is near chance)")
    ap.add_argument("--bundle", help="use this bundle")
    ap.add_argument("--threads", type=int, default=0,
                    help="ONNX Runtime threads for indexing (default 0: one per core)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the recording (default 7)")
    ap.add_argument("--background", default="pink",
                    help="background of the recording (default pink; 'stream' is the one "
                         "held out of the training corpus)")
    ap.add_argument("--heldout-queries", action="store_true",
                    help="query each call with a phrasing held out of the training captions "
                         "(default: its first, seen phrasing)")
    args = ap.parse_args(argv)
    from ..library.library import Library  # lazy: --help stays fast
    from ..query.search import search_text  # lazy: --help stays fast
    from .synth.captions import queries_for  # lazy: --help stays fast
    from .synth.corpus import events_path  # lazy: --help stays fast

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    if args.bundle:
        bundle_dir = Path(args.bundle)
    elif args.retrain or not (SHIPPED_BUNDLE / "manifest.json").exists():
        print("== 1. training and exporting a tiny bundle (" + ("a few minutes" if args.quick
              else "about 25 minutes at one thread") + ")")
        bundle_dir = retrain(out / "train", quick=args.quick)
    else:
        bundle_dir = SHIPPED_BUNDLE
        print(f"== 1. model bundle: {bundle_dir.relative_to(REPO)} (shipped; "
              "`make demo ARGS=--retrain` reproduces it)")
    if cli("bundle", "verify", str(bundle_dir)) != 0:
        return 1

    print("\n== 2. a field recording with known events")
    # a recording other than the default one gets its own folders (its own store)
    tag = "" if (args.seed, args.background) == (7, "pink") else f"-{args.seed}-{args.background}"
    field = out / f"field{tag}"
    recording = field / "20240612_050000.flac"
    if not events_path(recording).exists():
        field.mkdir(exist_ok=True)
        if cli("synth", "--soundscape", str(recording), "--minutes", f"{args.minutes:g}",
               "--seed", str(args.seed), "--background", args.background,
               "--events-per-minute", "3", "--call-types", ",".join(DEMO_CALLS),
               "--force") != 0:
            return 1
    events = json.loads(events_path(recording).read_text())
    if isinstance(events, dict):
        events = events["events"]

    print("\n== 3. index it")
    store_dir = out / f"store{tag}"
    rc = cli("index", str(field), "--db", str(store_dir), "--bundle", str(bundle_dir),
             "--station", "demo-forest", "--threads", str(args.threads))
    if rc not in (0, 3):
        return rc
    cli("info", "--db", str(store_dir))

    print("\n== 4. search by text")
    lib = Library.open(store_dir, bundle_dir, graphs=("text",))
    store, bundle = lib.store, lib.bundle
    n_windows = len(store)
    _, all_windows = store.read(range(n_windows))
    precisions, chances = [], []
    for label in DEMO_CALLS[:5]:
        query = queries_for(label, heldout=True if args.heldout_queries else None)[0]
        t0 = time.perf_counter()
        result = search_text(store, bundle, query, k=10)
        ms = (time.perf_counter() - t0) * 1e3
        print(f'\n$ cvahash search "{query}" --db {store_dir} -k 10      ({ms:.0f} ms)')
        print(f"  {'rank':>4} {'dist':>4}  {'window':>13}  what was playing")
        good = 0
        for hit in result.hits:
            truth = window_labels(events, hit.start_s, hit.end_s)
            ok = label in truth
            good += ok
            span = f"{_clock(hit.start_s)}-{_clock(hit.end_s)}"
            print(f"  {hit.rank:>4} {hit.distance:>4}  {span:>13}  "
                  f"{'+' if ok else ' '} {', '.join(truth) or '(background only)'}")
        holding = sum(label in window_labels(events, w.offset_s, w.offset_s + w.length_s)
                      for w in all_windows)
        p10 = good / max(len(result.hits), 1)
        precisions.append(p10)
        chances.append(holding / max(n_windows, 1))
        print(f"  precision@10 = {p10:.2f}   (chance: {chances[-1]:.2f} of windows hold it)")
    lib.close()
    mean_p = sum(precisions) / len(precisions)
    mean_c = sum(chances) / len(chances)
    print(f"\n== mean precision@10 over 5 queries: {mean_p:.2f} (chance {mean_c:.2f}); "
          f"{n_windows} windows of {args.minutes:g} min; whole demo "
          f"{time.monotonic() - t_start:.0f} s")
    return 0


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


if __name__ == "__main__":
    sys.exit(main())

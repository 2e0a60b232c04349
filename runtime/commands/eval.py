"""`cvahash eval RUN_DIR... --data MANIFEST`: retrieval quality of trained runs.

Prints a table of mAP@K and P@K (K = 1, 5, 10, 20) for text->audio and audio->text with
binary Hamming codes, continuous cosine of the same encoders, and two-stage (Hamming
top-100 re-ranked by cosine); writes JSON and a PNG of mAP@10 against bits. Needs the
[export] extra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="retrieval quality of trained runs: mAP@K, P@K (workstation)",
        description="Evaluate runs from `cvahash train` on a manifest split.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run folders written by `cvahash train`")
    p.add_argument("--data", required=True, metavar="MANIFEST",
                   help="corpus manifest (JSONL or CSV) holding the split (required)")
    p.add_argument("--split", default="test",
                   help="manifest split to evaluate (default: test)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="write results here (default: eval.json in the first RUN_DIR)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="mAP@10 vs bits plot (default: eval.png in the first RUN_DIR)")
    p.add_argument("--rerank-depth", type=int, default=100,
                   help="Hamming candidates re-ranked by cosine in the two-stage rows "
                        "(default: 100)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="where to encode; auto picks CUDA, then MPS, then CPU (default: auto)")
    p.add_argument("--cache-dir", default=None,
                   help="log-mel cache folder (default: .cvahash-cache beside the manifest)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress line (default: a progress line on stderr)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .workstation import workstation_extra

    with workstation_extra("eval"):
        from ..export.train import evaluate
    results = []
    try:
        for run_dir in args.runs:
            results.append(evaluate.evaluate_run(
                run_dir, args.data, split=args.split, device=args.device,
                cache_dir=args.cache_dir, rerank_depth=args.rerank_depth,
                progress=not args.quiet))
    except ValueError as exc:
        print(f"cvahash eval: error: {exc}", file=sys.stderr)
        return 1
    print(evaluate.format_table(results))
    first = Path(args.runs[0])
    json_path = evaluate.write_json(results, args.json or first / "eval.json")
    png_path = evaluate.plot_map_vs_bits(results, args.plot or first / "eval.png")
    print(f"wrote {json_path} and {png_path}", file=sys.stderr)
    return 0

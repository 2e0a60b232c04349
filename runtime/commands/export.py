"""`cvahash export`: turn a training run into a model bundle for a Pi or Jetson (workstation).

    cvahash export RUN_DIR --out BUNDLE [--precision int8|fp16|fp32] [--data MANIFEST]

Merges LoRA, exports the text and audio graphs to ONNX, quantises them (int8: every
method is tried and the one whose codes agree best with PyTorch is kept, per branch),
and writes manifest.json with sha256 of every file and the fingerprint (docs/bundle.md).
int8 suits CPU devices (Pi, x86 station); fp16 a Jetson GPU. Needs the [export] extra.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a training run to a model bundle (workstation)",
        description="Export a training run (LoRA merged, heads included) to a model bundle: "
                    "text.onnx, audio.onnx, tokenizer.json, manifest.json.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder written by `cvahash train`")
    p.add_argument("--out", required=True, metavar="BUNDLE",
                   help="bundle folder to create (required)")
    p.add_argument("--precision", choices=("int8", "fp16", "fp32"), default="int8",
                   help="int8 for CPU devices, fp16 for a Jetson GPU, fp32 reference "
                        "(default: int8)")
    p.add_argument("--data", metavar="MANIFEST", default=None,
                   help="corpus manifest (JSONL); its train split calibrates, its val/test "
                        "split picks the quantisation (default: a built-in synthetic probe)")
    p.add_argument("--probe-limit", type=int, default=48,
                   help="held-out clips used to score quantisation methods (default: 48)")
    p.add_argument("--force", action="store_true",
                   help="replace BUNDLE if it exists (default: refuse)")
    p.add_argument("--json", action="store_true",
                   help="print the manifest as JSON (default: a short summary)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .workstation import workstation_extra

    # Fails early with the extra's name, not deep inside the exporter.
    with workstation_extra("export"):
        from ..export.onnx.bundle_writer import export_run
    if args.probe_limit < 1:
        print("cvahash export: error: --probe-limit must be >= 1", file=sys.stderr)
        return 2
    result = export_run(args.run_dir, args.out, args.precision, data=args.data,
                        force=args.force, probe_limit=args.probe_limit)
    m = result.manifest
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    q = m["quantization"]
    print(f"bundle {result.path}: fingerprint {m['fingerprint']}, {m['bits']} bits, "
          f"{m['precision']}")
    for branch in ("text", "audio"):
        name = m["graphs"][branch]["file"]
        print(f"  {name:<11} {m['files'][name]['bytes'] / 1e6:8.2f} MB  {q[branch]['method']}"
              f"  bit agreement {q[branch]['bit_agreement']:.4f} on {q['probe']}")
    return 0

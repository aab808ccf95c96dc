#!/usr/bin/env python
"""Train and evaluate the MSA bundle twice on the synthetic demo data with the same seed, in float32 and
under bfloat16 autocast, and print the test Dice of both (the check that mixed precision leaves the
result within 0.01 Dice). Writes OUT/precision_comparison.{md,json}; each run's logs and outputs are in
OUT/<precision>/.

    python tools/compare_precision.py --out amp_check            # vit_tiny, 64 px, 3 epochs, batch 8, CPU

The demo data (tools/make_demo_data.py) are written to OUT/data unless --data-root names them.
Exit status 1 if a Dice differs from float32's by more than --tolerance."""

import argparse
import json
import shlex
import sys
from pathlib import Path

from tqdm import tqdm

from fedfms.core.io import write_json_atomic, write_text_atomic
from fedfms.data.demo import make_demo_data
from fedfms.study.precision import PRECISIONS, as_json, markdown_table, run_precision

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--data-root", type=Path, default=None, help="folder holding prostate/SITE/datalist.json (default: OUT/data, made if absent)")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"], choices=list(PRECISIONS),
                        help="the first is the reference (default: float32 bfloat16; float16 needs CUDA)")
    parser.add_argument("--model-type", default="vit_tiny")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="the demo profile's (default 1e-3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tolerance", type=float, default=0.01, help="largest accepted Dice difference")
    args = parser.parse_args()

    data_root = args.data_root or args.out / "data"
    datalists = sorted(str(p) for p in (data_root / "prostate").glob("*/datalist.json"))
    if not datalists:
        if args.data_root:
            parser.error(f"no prostate/*/datalist.json under --data-root {args.data_root}")
        make_demo_data(data_root)
        datalists = sorted(str(p) for p in (data_root / "prostate").glob("*/datalist.json"))
    settings = {"model_type": args.model_type, "image_size": args.image_size, "max_epochs": args.epochs,
                "batch_size": args.batch_size, "learning_rate": args.learning_rate, "device": args.device,
                "num_workers": 0}
    runs = [run_precision(REPO / "bundles" / "msa", datalists, args.out, precision, settings)
            for precision in tqdm(args.precisions, desc="precisions", unit="run")]
    table = markdown_table(runs)
    command = shlex.join(["python", "tools/compare_precision.py", *sys.argv[1:]])
    write_json_atomic(args.out / "precision_comparison.json", {"command": command, "settings": settings,
                                                               "datalists": datalists, "runs": as_json(runs)})
    write_text_atomic(args.out / "precision_comparison.md",
                      f"{table}\n\nSYNTHETIC demo data; MSA bundle, {settings}. Measured with `{command}`.\n")
    print(table)
    worst = max(abs(run.dice - runs[0].dice) for run in runs)
    print(f"largest Dice difference from {runs[0].precision}: {worst:.4f} (tolerance {args.tolerance})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())

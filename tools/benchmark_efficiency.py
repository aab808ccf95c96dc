#!/usr/bin/env python
"""Measure FedSAM and FedMSA training efficiency side by side with the paper's Table 2 columns:
learnable parameters, bytes per round each way, FLOPs of a training step (forward + backward), step
time, peak memory and predict time per image, for each configuration of
fedfms.reporting.efficiency.CONFIGURATIONS (the fp32 reference paths and the bundles' defaults), each
in its own process. Writes OUT/efficiency.json, OUT/efficiency.md and OUT/efficiency.png.

The paper's setting on CPU (batch 1; minutes per row on a 2-core CPU):
    python tools/benchmark_efficiency.py --model-type vit_b --image-size 1024 --steps 2 --out efficiency_vit_b_1024
On a GPU at the paper's batch sizes (FedSAM 6, FedMSA 4), ViT-B and ViT-L: bash tools/gpu_benchmark.sh
The default is a quick ViT-B run at 256 px.

It also measures the bytes a site sends and receives per round under each transfer option (float32,
float16, int8 deltas, top-k, partial upload: fedfms.orchestration.transfer.EXAMPLES), running the jobs'
own filter chains in process (about a minute at ViT-B)."""

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Tuple

from tqdm import tqdm

from fedfms.core.io import save_figure_atomic, write_json_atomic, write_text_atomic
from fedfms.networks.configs import ENCODER_CONFIGS
from fedfms.reporting.efficiency import CONFIGURATIONS, EfficiencyResult, markdown_table, measure, ratios

#: ``--batch-size paper``: the reference code's batch sizes (FedSAM 6, FedMSA 4; prostate, fundus).
PAPER_BATCH = {"sam": 6, "msa": 4}


def _batch_size(value: str):
    if value == "paper":
        return value
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'paper', got {value!r}")
    return size


def plan(model_types: List[str], configs: List[str], batch_size) -> List[Tuple[str, str, int]]:
    """The rows to measure, in order: (configuration, model type, batch size)."""
    return [(config, model_type, PAPER_BATCH[CONFIGURATIONS[config].network] if batch_size == "paper" else batch_size)
            for model_type in model_types for config in configs]


def _plot(results: List[EfficiencyResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in results if r.status == "ok"]
    metrics = [("upload_bytes", "MiB sent per round (each way)", 2**20), ("train_step_tflops", "TFLOPs per step", 1),
               ("train_step_seconds", "s per training step", 1), ("peak_memory_mib", "peak memory (MiB)", 1),
               ("predict_seconds_per_image", "s per image (predict)", 1)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.2))
    labels = [f"{r.config}\n{r.model_type}, b{r.batch_size}" for r in shown]
    colors = {"sam": "#d95f02", "msa": "#1b9e77"}
    for axis, (key, title, scale) in zip(axes, metrics):
        axis.bar(range(len(shown)), [getattr(r, key) / scale for r in shown], color=[colors[r.network] for r in shown])
        axis.set_xticks(range(len(shown)), labels, rotation=60, ha="right", fontsize=7)
        axis.set_title(title, fontsize=9)
    if shown:
        fig.suptitle(f"{shown[0].image_size} px, {shown[0].device}")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)


def _write_results(out: Path, command: str, results: List[EfficiencyResult], transfer: Dict[str, list]) -> str:
    """Write OUT/efficiency.json and .md for the rows measured so far (and the transfer tables, once
    made); return the markdown table."""
    table = markdown_table(results)
    if transfer:
        from fedfms.orchestration.transfer_table import transfer_markdown

        for model_type, rows in transfer.items():
            table += f"\n\nBytes per site and round by transfer option, {model_type}:\n\n" + transfer_markdown(rows)
    versus = {f"{r.config}/{r.model_type}/b{r.batch_size}": ratios(r, results) for r in results}
    payload = {"command": command, "results": [r.as_dict() for r in results],
               "ratios": {row: ratio for row, ratio in versus.items() if ratio}, "transfer": transfer}
    write_json_atomic(out / "efficiency.json", payload)
    write_text_atomic(out / "efficiency.md",
                      f"{table}\n\n'vs baseline': the row's training-step speed-up (by CPU time on CPU, by wall "
                      f"time on CUDA) and peak-memory ratio against its baseline row (the fp32 reference path) "
                      f"measured in this run.\n\nMeasured with `{command}`.\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-type", nargs="+", default=["vit_b"], choices=sorted(ENCODER_CONFIGS))
    parser.add_argument("--image-size", type=int, default=256, help="input side in px (paper: 1024)")
    parser.add_argument("--batch-size", type=_batch_size, default=1,
                        help="images per step, or 'paper': FedSAM 6, FedMSA 4 (default 1)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGURATIONS), choices=list(CONFIGURATIONS),
                        help="rows to measure (default: all, in this order)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (and predictions) after one counted warm-up step")
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--sam-checkpoint", default=None, help="official SAM weights (timing does not depend on them)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per row (default torch's: one per core); 1 keeps a shared machine's "
                             "load from stalling multi-threaded kernels")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per row; a row over it is reported, not measured")
    parser.add_argument("--transfer-table", action=argparse.BooleanOptionalAction, default=True,
                        help="also tabulate the bytes per round under each transfer option (device-independent; "
                             "needs NVFlare: --no-transfer-table on a GPU machine with only torch, MONAI and "
                             "segment_anything)")
    parser.add_argument("--dry-run", action="store_true", help="print the rows that would be measured and exit")
    parser.add_argument("--out", type=Path, default=Path("efficiency"), help="output folder")
    args = parser.parse_args()

    rows = plan(args.model_type, args.configs, args.batch_size)
    if args.dry_run:
        for config, model_type, batch in rows:
            print(f"{config}\t{model_type}\t{args.image_size} px\tbatch {batch}\t{args.device}\t{CONFIGURATIONS[config].label}")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "tools/benchmark_efficiency.py", *sys.argv[1:]])
    results = []
    for config, model_type, batch in tqdm(rows, desc="measuring", unit="row"):
        results.append(measure(config, model_type, args.image_size, timeout=args.timeout, batch_size=batch,
                               steps=args.steps, device=args.device, checkpoint=args.sam_checkpoint,
                               threads=args.threads))
        tqdm.write(f"{config} {model_type} batch {batch}: {results[-1].status}")
        table = _write_results(args.out, command, results, {})  # rows so far survive a cut-off run
    # bytes each way per site and round under each transfer option (float16, int8, top-k, partial upload)
    if args.transfer_table:
        from fedfms.orchestration.transfer_table import transfer_table  # imports NVFlare

        table = _write_results(args.out, command, results,
                               {model_type: transfer_table(model_type=model_type) for model_type in args.model_type})
    _plot(results, args.out / "efficiency.png")
    print(table)
    print(f"wrote {args.out}/efficiency.json, efficiency.md, efficiency.png")
    if any(r.status != "ok" for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()

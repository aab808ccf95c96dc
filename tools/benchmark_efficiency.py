#!/usr/bin/env python
"""Measure FedSAM vs FedMSA training efficiency on this machine: trainable and transmitted parameters,
bytes sent per round, FLOPs and wall time of one training step, peak memory. Each configuration runs
in its own process. Writes OUT/efficiency.json, OUT/efficiency.md and OUT/efficiency.png.

The paper's comparison (Table 2) is ViT-B at 1024 px, batch 1 here:
    python tools/benchmark_efficiency.py --model-type vit_b --image-size 1024 --out efficiency_vit_b_1024
(about 20 s per step for each model on a 2-core CPU). The default is a quick ViT-B run at 256 px.

It also measures the bytes a site sends and receives per round under each transfer option (float32,
float16, int8 deltas, top-k, partial upload: fedfms.orchestration.transfer.EXAMPLES), running the jobs'
own filter chains in process (about a minute at ViT-B)."""

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from fedfms.core.io import save_figure_atomic, write_text_atomic
from fedfms.orchestration.transfer import transfer_markdown, transfer_table
from fedfms.reporting.efficiency import markdown_table, measure


def _plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("transmitted_bytes", "MiB sent per round", 2**20), ("train_step_tflops", "TFLOPs per step", 1),
               ("train_step_seconds", "s per step", 1), ("peak_memory_mib", "peak memory (MiB)", 1)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2))
    labels = [f"{'FedSAM' if r.network == 'sam' else 'FedMSA'}\n{r.model_type}" for r in results]
    for axis, (key, title, scale) in zip(axes, metrics):
        axis.bar(labels, [getattr(r, key) / scale for r in results], color=["#d95f02", "#1b9e77"] * len(results))
        axis.set_title(title)
    first = results[0]
    fig.suptitle(f"{first.image_size} px, batch {first.batch_size}, {first.device}")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-type", default="vit_b", choices=["vit_tiny", "vit_b", "vit_l", "vit_h"])
    parser.add_argument("--image-size", type=int, default=256, help="input side in px (paper: 1024)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one counted warm-up step")
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--sam-checkpoint", default=None, help="official SAM weights (timing does not depend on them)")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("efficiency"), help="output folder")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    results = [
        measure(network, args.model_type, args.image_size, batch_size=args.batch_size, steps=args.steps,
                device=args.device, checkpoint=args.sam_checkpoint,
                activation_checkpointing=args.activation_checkpointing)
        for network in tqdm(["sam", "msa"], desc="measuring", unit="model")
    ]
    table = markdown_table(results)
    sam, msa = results
    ratios = (f"FedMSA / FedSAM: sent {msa.transmitted_bytes / sam.transmitted_bytes:.3f}, "
              f"FLOPs {msa.train_step_tflops / sam.train_step_tflops:.2f}, "
              f"time {msa.train_step_seconds / sam.train_step_seconds:.2f}, "
              f"memory {msa.peak_memory_mib / sam.peak_memory_mib:.2f} (measured in this run)")
    command = "python tools/benchmark_efficiency.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False) and k != "activation_checkpointing"
    ) + (" --activation-checkpointing" if args.activation_checkpointing else "")
    # bytes each way per site and round under each transfer option (float16, int8, top-k, partial upload)
    transfer = transfer_table(model_type=args.model_type)
    table += "\n\nBytes per site and round by transfer option:\n\n" + transfer_markdown(transfer)
    write_text_atomic(args.out / "efficiency.json", json.dumps({"command": command, "results": [r.as_dict() for r in results],
                                                                "transfer": transfer}, indent=2))
    write_text_atomic(args.out / "efficiency.md", f"{table}\n\n{ratios}\n\nMeasured with `{command}`.\n")
    _plot(results, args.out / "efficiency.png")
    print(table)
    print(ratios)
    print(f"wrote {args.out}/efficiency.json, efficiency.md, efficiency.png")


if __name__ == "__main__":
    main()

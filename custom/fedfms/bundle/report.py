"""Evaluation report: per-sample CSV and summary JSON written by a handler on the bundle's evaluator.

For each evaluated slice the handler keeps the overlap counts per channel (and per threshold for the
sweep metric); at epoch end it writes OUTPUT_DIR/PREFIX_per_sample.csv (site, volume, slice, image,
Dice and IoU per channel) and OUTPUT_DIR/PREFIX_summary.json: Dice and IoU averaged over slices per
channel and over channels, per-volume 3D Dice (counts summed over a volume's slices, volumetric data
only, slice >= 0) averaged over volumes, and the same per site when datalists were pooled.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events

from fedfms.core.io import atomic_path
from fedfms.bundle.metrics import dice_from_counts, iou_from_counts, overlap_counts

logger = logging.getLogger(__name__)


def _summary(rows: list[dict[str, Any]], channels: Sequence[str]) -> dict[str, Any]:
    """Means over slices (Dice, IoU) and over volumes (3D Dice) of the rows' counts, per channel."""
    counts = torch.stack([r["counts"] for r in rows])  # (N, C, T, 3)
    dice, iou = dice_from_counts(counts), iou_from_counts(counts)  # (N, C)
    volumes: dict[tuple[str, str], torch.Tensor] = {}
    for r in rows:
        if r["slice"] >= 0:
            key = (r["site"], r["volume"])
            volumes[key] = volumes[key] + r["counts"] if key in volumes else r["counts"].clone()
    out: dict[str, Any] = {
        "num_slices": len(rows),
        "dice": dice.mean().item(),
        "iou": iou.mean().item(),
        "per_channel": {c: {"dice": dice[:, i].mean().item(), "iou": iou[:, i].mean().item()} for i, c in enumerate(channels)},
    }
    if volumes:
        dice_3d = dice_from_counts(torch.stack(list(volumes.values())))  # (V, C)
        out["num_volumes"] = len(volumes)
        out["dice_3d"] = dice_3d.mean().item()
        for i, c in enumerate(channels):
            out["per_channel"][c]["dice_3d"] = dice_3d[:, i].mean().item()
        out["per_volume_dice_3d"] = {
            f"{site}/{vol}": {c: d[i].item() for i, c in enumerate(channels)} for (site, vol), d in zip(volumes, dice_3d)
        }
    return out


class EvaluationReport:
    """Ignite handler for a SupervisedEvaluator whose output "pred" holds logits (C, H, W).

    output_dir: where the CSV and JSON go; channel_names: one name per output channel (the datalist's
    label_channels); binarize: "sigmoid" (> 0.5) or "sweep" (reference thresholds on logits).
    """

    def __init__(
        self,
        output_dir: str,
        channel_names: Sequence[str],
        binarize: str = "sigmoid",
        prefix: str = "evaluation",
        pred_key: str = "pred",
        label_key: str = "label",
    ) -> None:
        self.output_dir, self.channels, self.binarize, self.prefix = output_dir, list(channel_names), binarize, prefix
        self.pred_key, self.label_key = pred_key, label_key
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        """Keep the counts and identity of every sample of the (decollated) batch."""
        for sample, output in zip(engine.state.batch, engine.state.output):
            pred, label = output[self.pred_key], output[self.label_key]
            if pred.shape[0] != len(self.channels):
                raise ValueError(f"prediction has {pred.shape[0]} channels but label_channels are {self.channels}")
            meta = getattr(sample["image"], "meta", {})
            self.rows.append(
                {
                    "site": str(sample.get("site", "")),
                    "volume": str(sample.get("volume", "")),
                    "slice": int(sample.get("slice", -1)),
                    "image": str(meta.get("filename_or_obj", "")),
                    "counts": overlap_counts(pred[None], label[None], self.binarize)[0].cpu(),
                }
            )

    def write(self, engine: Engine) -> dict[str, Any]:
        """Write the CSV and summary JSON atomically, log the summary, and return it."""
        if not self.rows:
            raise RuntimeError("EvaluationReport: the evaluator produced no samples (empty test split?)")
        counts = torch.stack([r["counts"] for r in self.rows])
        dice, iou = dice_from_counts(counts), iou_from_counts(counts)
        with atomic_path(os.path.join(self.output_dir, f"{self.prefix}_per_sample.csv")) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["site", "volume", "slice", "image", *(f"{m}_{c}" for m in ("dice", "iou") for c in self.channels)])
            for r, d, u in zip(self.rows, dice.tolist(), iou.tolist()):
                writer.writerow([r["site"], r["volume"], r["slice"], r["image"], *d, *u])
        summary = {"binarize": self.binarize, "channels": self.channels, **_summary(self.rows, self.channels)}
        by_site = defaultdict(list)
        for r in self.rows:
            by_site[r["site"]].append(r)
        if len(by_site) > 1:
            summary["per_site"] = {site: _summary(rows, self.channels) for site, rows in by_site.items()}
        with atomic_path(os.path.join(self.output_dir, f"{self.prefix}_summary.json")) as tmp, open(tmp, "w") as f:
            json.dump(summary, f, indent=2)
        lines = [f"evaluation ({self.binarize}) of {summary['num_slices']} slices -> {self.output_dir}"]
        for c, m in summary["per_channel"].items():
            lines.append(f"  {c:>12}: Dice {m['dice']:.4f}  IoU {m['iou']:.4f}" + (f"  3D Dice {m['dice_3d']:.4f}" if "dice_3d" in m else ""))
        lines.append(f"  {'mean':>12}: Dice {summary['dice']:.4f}  IoU {summary['iou']:.4f}")
        logger.info("\n".join(lines))
        return summary

"""Does mixed precision change the result? The MSA bundle trained and evaluated twice on the same data
with the same seed, once in float32 and once under an autocast dtype; the test-split Dice side by side.

Both runs use the bundle's own train and evaluate commands (``fedfms.study.commands.bundle_command``, the study's config files),
train on the sites' pooled training splits, and evaluate the final model (``model_final.pt``: the best
by validation Dice could come from different epochs) on the pooled test splits.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from fedfms.orchestration.simulator import run_logged
from .commands import bundle_command
from .runs import EVALUATE_CONFIGS, TRAIN_CONFIGS

#: precision label -> bundle overrides
PRECISIONS: Dict[str, Dict[str, str]] = {
    "float32": {"amp": "false"},
    "bfloat16": {"amp": "true", "amp_dtype": "bfloat16"},
    "float16": {"amp": "true", "amp_dtype": "float16"},
}


@dataclass(frozen=True)
class PrecisionRun:
    precision: str
    dice: float
    iou: float
    dice_3d: Optional[float]
    per_site_dice: Dict[str, float]
    train_seconds: float


def run_precision(bundle_root: Path, datalists: Sequence[str], out: Path, precision: str,
                  settings: Dict[str, object]) -> PrecisionRun:
    """Train then evaluate the bundle at ``precision`` (a key of PRECISIONS) into ``out/precision``."""
    folder = out / precision
    overrides = {"datalist": list(datalists), **settings, **PRECISIONS[precision]}
    train_seconds = run_logged(
        bundle_command(bundle_root, "", TRAIN_CONFIGS, {**overrides, "output_dir": str(folder / "train")}),
        folder / "train.log")
    run_logged(bundle_command(bundle_root, "evaluate", EVALUATE_CONFIGS,
                              {**overrides, "ckpt_path": str(folder / "train" / "model_final.pt"),
                               "output_dir": str(folder / "eval")}),
               folder / "evaluate.log")
    summary = json.loads((folder / "eval" / "evaluation_summary.json").read_text())
    return PrecisionRun(precision, summary["dice"], summary["iou"], summary.get("dice_3d"),
                        {site: s["dice"] for site, s in summary.get("per_site", {}).items()}, train_seconds)


def markdown_table(runs: List[PrecisionRun]) -> str:
    """One row per precision, then each row's difference from the first (the float32 run)."""
    sites = sorted(runs[0].per_site_dice)
    head = ["precision", "Dice", "IoU", "3D Dice", *(f"Dice {s}" for s in sites), "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for run in runs:
        lines.append("| " + " | ".join([run.precision, fmt(run.dice), fmt(run.iou), fmt(run.dice_3d),
                                        *(fmt(run.per_site_dice[s]) for s in sites), f"{run.train_seconds:.0f}"]) + " |")
    base = runs[0]
    for run in runs[1:]:
        diff = lambda a, b: None if a is None or b is None else a - b  # noqa: E731
        sign = lambda v: "-" if v is None else f"{v:+.4f}"  # noqa: E731
        lines.append("| " + " | ".join([f"{run.precision} - {base.precision}", sign(diff(run.dice, base.dice)),
                                        sign(diff(run.iou, base.iou)), sign(diff(run.dice_3d, base.dice_3d)),
                                        *(sign(run.per_site_dice[s] - base.per_site_dice[s]) for s in sites), ""]) + " |")
    return "\n".join(lines)


def as_json(runs: List[PrecisionRun]) -> List[Dict[str, object]]:
    return [asdict(run) for run in runs]

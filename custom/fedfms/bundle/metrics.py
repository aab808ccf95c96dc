"""The paper's segmentation metrics, per 2D slice and per channel, plus per-volume 3D Dice.

Dice = (2 I + 1e-4) / (|P| + |G| + 1e-4) and IoU = (I + 1e-6) / (U + 1e-6) per slice and channel,
averaged over slices. MONAI's DiceMetric / MeanIoU do not compute these: they have no smoothing terms
and score an empty ground truth as NaN (ignored) or by a fixed rule, while the paper's smoothed
formula gives 1 for an empty slice predicted empty and ~0 for a false positive on an empty slice.
Both metrics are derived from per-slice overlap counts (I, |P|, |G|), which also sum over a volume's
slices into 3D Dice.

A sample whose output holds NaN or inf is scored as a failure, never as an empty mask: its prediction is
taken to be the complement of its label (every pixel wrong: Dice and IoU ~0, also in its volume's 3D
Dice), and a warning says how many samples were affected. (Thresholding would silently turn NaN into
"background", which scores 1 on every empty slice: a NaN model would look as good as a healthy one.)

Binarization is a registry: "sigmoid" (the standard sigmoid > 0.5, default) or "sweep" (the reference
code: raw logits thresholded at 0.1, 0.3, 0.5, 0.7, 0.9, metric averaged over the thresholds).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from monai.metrics import CumulativeIterationMetric

SWEEP_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
logger = logging.getLogger(__name__)

# logits (B, C, H, W) -> binary masks (B, C, T, H, W), one per threshold T
BINARIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": lambda logits: (torch.sigmoid(logits) > 0.5).unsqueeze(2),
    "sweep": lambda logits: torch.stack([logits > t for t in SWEEP_THRESHOLDS], dim=2),
}


def overlap_counts(logits: torch.Tensor, label: torch.Tensor, binarize: str = "sigmoid") -> torch.Tensor:
    """Per-sample overlap counts.

    logits: (B, C, H, W) network output; label: (B, C, H, W) in {0, 1}, same shape.
    Returns float64 (B, C, T, 3) holding [intersection, |prediction|, |ground truth|] per threshold T
    of the `binarize` rule. A sample with a non-finite output counts as every pixel wrong (see above).
    """
    if binarize not in BINARIZERS:
        raise ValueError(f"binarize must be one of {sorted(BINARIZERS)}, got {binarize!r}")
    if logits.shape != label.shape or logits.ndim != 4:
        raise ValueError(
            f"expected prediction and label of the same shape (B, C, H, W), got {tuple(logits.shape)} and "
            f"{tuple(label.shape)}: resize the label to the network's output size (image_size // 4 for SAM)"
        )
    pred = BINARIZERS[binarize](logits.detach()).double()
    gt = (label.detach() > 0).double().unsqueeze(2).expand_as(pred)
    failed = ~torch.isfinite(logits.detach()).flatten(1).all(1)
    if failed.any():
        logger.warning("%d of %d samples have non-finite (NaN/inf) network outputs: scored as failures "
                       "(every pixel wrong, Dice 0)", int(failed.sum()), len(failed))
        pred = torch.where(failed.view(-1, 1, 1, 1, 1), 1.0 - gt, pred)
    return torch.stack([(pred * gt).sum((-2, -1)), pred.sum((-2, -1)), gt.sum((-2, -1))], dim=-1)


def dice_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """(..., T, 3) counts -> (...) Dice, averaged over the thresholds T."""
    inter, pred, gt = counts.unbind(-1)
    return ((2 * inter + 1e-4) / (pred + gt + 1e-4)).mean(-1)


def iou_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """(..., T, 3) counts -> (...) IoU, averaged over the thresholds T."""
    inter, pred, gt = counts.unbind(-1)
    return ((inter + 1e-6) / (pred + gt - inter + 1e-6)).mean(-1)


SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"dice": dice_from_counts, "iou": iou_from_counts}


class SliceOverlapMetric(CumulativeIterationMetric):
    """Per-slice Dice or IoU (paper formulas) as a MONAI cumulative metric.

    Buffers one (C,) score per sample; `aggregate()` returns the mean over samples and channels, the
    validation key metric the trainer uses to keep the best model. Wrap it with
    monai.handlers.IgniteMetricHandler to attach it to an engine.
    """

    def __init__(self, score: str = "dice", binarize: str = "sigmoid") -> None:
        super().__init__()
        if score not in SCORES or binarize not in BINARIZERS:
            raise ValueError(f"score in {sorted(SCORES)}, binarize in {sorted(BINARIZERS)}; got {score!r}, {binarize!r}")
        self.score, self.binarize = score, binarize

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return SCORES[self.score](overlap_counts(y_pred, y, self.binarize))

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        buffer = self.get_buffer()
        if not isinstance(buffer, torch.Tensor) or buffer.numel() == 0:
            raise RuntimeError(f"SliceOverlapMetric({self.score}): no samples were scored")
        return buffer.float().mean()

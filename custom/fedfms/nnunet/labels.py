"""fedfms label channels as nnU-Net labels, and nnU-Net outputs back as per-channel logits.

fedfms labels are L binary channels (L, H, W) that may overlap (fundus: the optic cup lies inside the
disc). nnU-Net trains on one integer label map; overlapping structures are "regions" (sets of label
values), trained with one sigmoid per region. Here channel c contributes bit c to the label map
(value = sum_c 2**c * channel_c) and region c is every value with bit c set, so nnU-Net's own
ConvertSegmentationToRegionsTransform gives back exactly the L channels.

One channel (prostate, brain, nuclei) is nnU-Net's plain binary case, {background: 0, name: 1}: its
LabelManager then trains softmax over two outputs (cross-entropy + Dice), as nnU-Net does for any
binary task; the per-channel logit is logit(fg) - logit(bg), whose sigmoid is the softmax foreground
probability. Two or more channels are always regions (sigmoid per channel, BCE + Dice).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

MAX_CHANNELS = 8  # bit encoding in an int16 label map; fedfms datasets have 1 or 2 channels


def _check(label_channels: Sequence[str]) -> list[str]:
    names = list(label_channels)
    if not 1 <= len(names) <= MAX_CHANNELS or len(set(names)) != len(names) or "background" in names:
        raise ValueError(f"label_channels must be 1..{MAX_CHANNELS} distinct names other than 'background', got {names}")
    return names


def nnunet_labels(label_channels: Sequence[str]) -> dict[str, int | list[int]]:
    """dataset.json "labels" for these channels: {"background": 0, name: 1} for one channel, else
    {"background": 0, name_c: [every label-map value with bit c set]} (regions)."""
    names = _check(label_channels)
    if len(names) == 1:
        return {"background": 0, names[0]: 1}
    values = range(1, 2 ** len(names))
    return {"background": 0, **{name: [v for v in values if v >> c & 1] for c, name in enumerate(names)}}


def regions_class_order(label_channels: Sequence[str]) -> list[int] | None:
    """dataset.json "regions_class_order" (required by nnU-Net with regions; it only matters when nnU-Net
    exports a label map, which fedfms never asks for): channel c -> value 2**c."""
    names = _check(label_channels)
    return None if len(names) == 1 else [2**c for c in range(len(names))]


def channels_to_label_map(channels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """(L, *spatial) binary channels -> (1, *spatial) int16 label map, value = sum_c 2**c * (channel_c > 0)."""
    if channels.shape[0] > MAX_CHANNELS:
        raise ValueError(f"at most {MAX_CHANNELS} label channels can be encoded, got shape {tuple(channels.shape)}")
    weights = [2**c for c in range(channels.shape[0])]
    if isinstance(channels, torch.Tensor):
        w = torch.tensor(weights, dtype=torch.int16, device=channels.device).view(-1, *([1] * (channels.ndim - 1)))
        return ((channels > 0).to(torch.int16) * w).sum(0, keepdim=True, dtype=torch.int16)
    w = np.asarray(weights, dtype=np.int16).reshape(-1, *([1] * (channels.ndim - 1)))
    return ((np.asarray(channels) > 0).astype(np.int16) * w).sum(0, keepdims=True, dtype=np.int16)


def channel_logits(output: torch.Tensor, has_regions: bool) -> torch.Tensor:
    """nnU-Net network output (B, heads, H, W) -> per-channel logits (B, L, H, W) for fedfms' metrics:
    regions are already one logit per channel; the binary softmax pair (bg, fg) becomes fg - bg."""
    if has_regions:
        return output
    if output.shape[1] != 2:
        raise ValueError(f"expected the binary softmax pair (background, foreground), got {output.shape[1]} outputs")
    return output[:, 1:2] - output[:, 0:1]

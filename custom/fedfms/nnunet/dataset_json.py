"""The nnU-Net dataset.json that describes fedfms' prepared samples to nnU-Net's planner and trainer.

Only the fields nnU-Net reads from it for planning, label handling and network construction:
channel_names (which select nnU-Net's normalization: every name here maps to its default, per-image
z-score, which nnU-Net uses for MRI and for RGB photographs alike), labels / regions_class_order
(fedfms.nnunet.labels), numTraining and file_ending (".npy", read by fedfms.nnunet.reader).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedfms.nnunet.labels import nnunet_labels, regions_class_order

# channels of a prepared sample: 1 = a normalized MRI slice, 3 = an RGB image
CHANNEL_NAMES = {1: {"0": "MRI"}, 3: {"0": "R", "1": "G", "2": "B"}}


def make_dataset_json(label_channels: Sequence[str], num_image_channels: int, num_training: int) -> dict[str, Any]:
    """dataset.json for samples with `num_image_channels` image channels (1 or 3), the datalists'
    `label_channels`, and `num_training` training cases (2D samples)."""
    if num_image_channels not in CHANNEL_NAMES:
        raise ValueError(f"prepared images have 1 (MRI) or 3 (RGB) channels, got {num_image_channels}")
    content = {
        "channel_names": CHANNEL_NAMES[num_image_channels],
        "labels": nnunet_labels(label_channels),
        "numTraining": int(num_training),
        "file_ending": ".npy",
    }
    order = regions_class_order(label_channels)
    if order is not None:
        content["regions_class_order"] = order
    return content

"""Inference outputs: predicted masks at the source resolution, plus overlay PNGs for a quick look.

Masks are resized back to each sample's source size (nearest). Slices of a volume (datalist "slice" >= 0)
are restacked along the volume's slice_axis into a 3D NIfTI with the source affine from the datalist's
metadata ("volumes": shape, affine, slice_axis); slices absent from the datalist stay 0. 2D samples
(slice -1) become PNG masks. One file per label channel, values 0/1 (NIfTI) or 0/255 (PNG):
OUTPUT_DIR/SITE/VOLUME_CHANNEL.nii.gz or .png, overlays in OUTPUT_DIR/SITE/overlays/.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events
from PIL import Image
from scipy.ndimage import binary_erosion

from fedfms.core.io import atomic_path
from fedfms.core.options import as_bool
from fedfms.bundle.datalist import load_metadata

logger = logging.getLogger(__name__)

# overlay fill colour per channel (RGB); the ground-truth outline is drawn in white
COLOURS = np.array([[255, 64, 64], [64, 160, 255], [255, 210, 0], [0, 220, 120]], dtype=np.float32)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) uint8 or float in [0, 1], C in {1, 3} -> (H, W, 3) float in [0, 255]."""
    img = image.astype(np.float32) * (1.0 if image.dtype == np.uint8 else 255.0)
    img = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img[:3]
    return np.clip(img.transpose(1, 2, 0), 0, 255)


def overlay(image: np.ndarray, pred: np.ndarray, label: np.ndarray | None = None, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 (H, W, 3): image with each predicted channel (C, H, W) filled and the label outlined."""
    rgb = _to_rgb(image)
    for c, mask in enumerate(pred.astype(bool)):
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * COLOURS[c % len(COLOURS)]
    if label is not None:
        for mask in label.astype(bool):
            rgb[mask & ~binary_erosion(mask)] = 255
    return rgb.astype(np.uint8)


def _save_png(array: np.ndarray, path: str) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


class PredictionWriter:
    """Ignite handler for an evaluator whose output "pred" is a binary mask (C, h, w) per sample.

    output_dir: where outputs go; datalist: the datalist path(s) evaluated (for the volume geometry);
    channel_names: one name per channel; write_overlays: also write overlay PNGs per slice.
    """

    def __init__(
        self,
        output_dir: str,
        datalist: str | Sequence[str],
        channel_names: Sequence[str],
        write_overlays: bool = True,
        pred_key: str = "pred",
    ) -> None:
        self.write_overlays = as_bool("write_overlays", write_overlays)
        self.output_dir, self.channels, self.pred_key = output_dir, list(channel_names), pred_key
        self.metadata = load_metadata(datalist)
        self.slices: dict[tuple[str, str], list[tuple[int, np.ndarray]]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.slices.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write_volumes)

    def collect(self, engine: Engine) -> None:
        """Resize each prediction to its source size; write 2D masks now, keep volume slices for later."""
        for sample, output in zip(engine.state.batch, engine.state.output):
            site, volume, index = str(sample["site"]), str(sample["volume"]), int(sample["slice"])
            image_path = str(sample["image"].meta["filename_or_obj"])
            image = np.load(image_path)
            pred = torch.as_tensor(output[self.pred_key]).float()[None]
            if pred.shape[1] != len(self.channels):
                raise ValueError(f"prediction has {pred.shape[1]} channels but label_channels are {self.channels}")
            pred = torch.nn.functional.interpolate(pred, size=image.shape[-2:], mode="nearest-exact")[0]
            mask = (pred > 0.5).numpy().astype(np.uint8)
            folder = os.path.join(self.output_dir, site)
            name = volume if index < 0 else f"{volume}_s{index:04d}"
            if index < 0:
                for c, channel in enumerate(self.channels):
                    _save_png(mask[c] * 255, os.path.join(folder, f"{volume}_{channel}.png"))
            else:
                self.slices.setdefault((site, volume), []).append((index, mask))
            if self.write_overlays:
                label = np.load(sample["label"].meta["filename_or_obj"]) if "label" in sample else None
                _save_png(overlay(image, mask, label), os.path.join(folder, "overlays", f"{name}.png"))

    def write_volumes(self, engine: Engine) -> None:
        """Restack the collected slices of every volume into NIfTI files with the source geometry."""
        for (site, volume), slices in self.slices.items():
            info: dict[str, Any] = self.metadata[site].get("volumes", {}).get(volume)
            if not info or info.get("slice_axis") is None:
                raise ValueError(f"datalist of site {site}: metadata.volumes[{volume!r}] lacks shape / slice_axis")
            shape, axis = tuple(info["shape"]), int(info["slice_axis"])
            affine = np.eye(4) if info.get("affine") is None else np.asarray(info["affine"], dtype=np.float64)
            stacked = np.zeros((len(self.channels), *shape), dtype=np.uint8)
            for index, mask in slices:
                plane = [slice(None)] * len(shape)
                plane[axis] = index
                target = stacked[(slice(None), *plane)]
                if target.shape != mask.shape:
                    raise ValueError(f"{site}/{volume} slice {index}: mask {mask.shape} does not fit volume shape {shape}")
                target[...] = mask
            for c, channel in enumerate(self.channels):
                with atomic_path(os.path.join(self.output_dir, site, f"{volume}_{channel}.nii.gz")) as tmp:
                    nib.save(nib.Nifti1Image(stacked[c], affine), tmp)
        logger.info(f"inference: wrote {len(self.slices)} volumes and the 2D masks / overlays to {self.output_dir}")

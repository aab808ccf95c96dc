"""A bundle's 2D network applied to a raw volume or image, with the preprocessing of prepared samples.

Volume: scaled to [0, 1] as a whole exactly as preparation does (``volume_percentile_normalize``: lower
bound the minimum, upper the 99th percentile, clipped), rounded through float16 as prepared samples are
stored, then sliced along the depth axis k by MONAI's ``SliceInferer``. Every slice (X, Y) goes
through the bundles' ``image_transforms`` (3 channels, bilinear to image_size), the network, and its
logits are resized back to X x Y (nearest-exact, as the datalist inference resizes its masks); the
slices are restacked in k order. So a volume gives the same mask here as its prepared slices give in
the datalist inference. Masks are sigmoid >= 0.5 (MONAI ``Activations`` + ``AsDiscrete``).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.inferers import SliceInferer
from monai.transforms import Activations, AsDiscrete, Compose
from monai.utils import convert_to_tensor

from fedfms.transforms import image_transforms, volume_percentile_normalize


class SliceSegmenter(torch.nn.Module):
    """(N, 1 or 3, H, W) images (uint8, or float in [0, 1]) -> logits (N, C, H, W) of ``network``.

    Each image is brought to the network's input by ``image_transforms(image_size)``; the logits
    (image_size / output_scale) are resized back to H x W, nearest-exact.
    """

    def __init__(self, network: torch.nn.Module, image_size: int) -> None:
        super().__init__()
        self.network = network
        self.to_input = Compose(image_transforms(image_size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch = torch.stack([convert_to_tensor(self.to_input({"image": x})["image"], track_meta=False) for x in images])
        logits = self.network(batch.float())
        return torch.nn.functional.interpolate(logits, size=images.shape[-2:], mode="nearest-exact")


def normalize_volume(array: np.ndarray) -> np.ndarray:
    """(X, Y, Z) any real dtype -> (X, Y, Z) float32 in [0, 1], as the prepared samples hold it."""
    scaled = volume_percentile_normalize("image")({"image": array[None].astype(np.float32)})["image"][0]
    return np.asarray(scaled, dtype=np.float16).astype(np.float32)  # prepared samples are stored as float16


_to_mask = Compose([Activations(sigmoid=True), AsDiscrete(threshold=0.5)])


def segment_volume(model: SliceSegmenter, volume01: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Normalized volume (X, Y, Z) -> uint8 masks (C, X, Y, Z), slice by slice along k, with a progress bar."""
    inferer = SliceInferer(roi_size=(-1, -1), sw_batch_size=batch_size, spatial_dim=2, overlap=0.0, progress=True)
    logits = inferer(torch.as_tensor(volume01, device=device)[None, None], model)[0]
    return np.asarray(convert_to_tensor(_to_mask(logits), track_meta=False).cpu(), dtype=np.uint8)


def segment_image(model: SliceSegmenter, image: np.ndarray, device: torch.device) -> np.ndarray:
    """(3, H, W) uint8 image -> uint8 masks (C, H, W)."""
    logits = model(torch.as_tensor(image, device=device)[None])[0]
    return np.asarray(convert_to_tensor(_to_mask(logits), track_meta=False).cpu(), dtype=np.uint8)

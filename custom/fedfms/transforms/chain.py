"""The standard preprocessing chain from a prepared datalist entry to a model-ready sample."""

from __future__ import annotations

from monai.transforms import Compose, EnsureTyped, Lambdad, LoadImaged, Resized

from fedfms.core.options import as_int
from fedfms.transforms.intensity import ScaleToUnitd, ToThreeChannelsd


def _slice_index(value: int | None) -> int:
    """Datalist "slice" is null for 2D sources; -1 keeps the batch collatable (default_collate rejects None)."""
    return -1 if value is None else int(value)


def image_transforms(image_size: int = 1024, image_key: str = "image") -> list:
    """Channel-first 2D image (1 or 3 channels; uint8, or float in [0, 1]) -> float32 (3, S, S) in [0, 1],
    S = image_size (bilinear). The model-input half of :func:`sample_transforms`; the bundles' inference
    on raw volumes and images applies the same list to each slice."""
    image_size = as_int("image_size", image_size, minimum=1)
    return [
        ScaleToUnitd(image_key),
        ToThreeChannelsd(image_key),
        Resized(image_key, spatial_size=(image_size, image_size), mode="bilinear", align_corners=False),
    ]


def sample_transforms(image_size: int = 1024, output_scale: int = 4, image_key: str = "image",
                      label_key: str = "label") -> Compose:
    """Chain for entries {"image": .npy, "label": .npy, "volume", "slice"} of a prepared datalist.

    Output: image float32 (3, S, S) in [0, 1] with S = image_size (bilinear); label float32
    (L, S/output_scale, S/output_scale) in {0, 1} ("nearest-exact": plain "nearest" shifts by a pixel);
    "slice" becomes an int (-1 for 2D sources). Bundles use it via
    ``{"_target_": "fedfms.transforms.sample_transforms", "image_size": "@image_size"}``.
    """
    image_size, output_scale = as_int("image_size", image_size, minimum=1), as_int("output_scale", output_scale, minimum=1)
    if image_size % output_scale:
        raise ValueError(f"image_size {image_size} must be a multiple of output_scale {output_scale}")
    keys = [image_key, label_key]
    return Compose([
        LoadImaged(keys, reader="NumpyReader", channel_dim=0, dtype=None),  # keep uint8 vs float16: ScaleToUnitd dispatches on it
        *image_transforms(image_size, image_key),
        Resized(label_key, spatial_size=(image_size // output_scale,) * 2, mode="nearest-exact"),
        Lambdad("slice", _slice_index, allow_missing_keys=True),
        EnsureTyped(keys, dtype="float32"),
    ])

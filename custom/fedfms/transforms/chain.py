"""The standard preprocessing chain from a prepared datalist entry to a model-ready sample."""

from __future__ import annotations

from monai.transforms import Compose, EnsureTyped, Lambdad, LoadImaged, Resized

from fedfms.core.options import as_bool, as_int
from fedfms.transforms.intensity import ScaleToUnitd, ToThreeChannelsd


def _slice_index(value: int | None) -> int:
    """Datalist "slice" is null for 2D sources; -1 keeps the batch collatable (default_collate rejects None)."""
    return -1 if value is None else int(value)


def image_transforms(image_size: int = 1024, image_key: str = "image", three_channels: bool = True,
                     allow_missing_keys: bool = False) -> list:
    """Channel-first 2D image (1 or 3 channels; uint8, or float in [0, 1]) -> float32 (3, S, S) in [0, 1],
    S = image_size (bilinear); ``three_channels=False`` keeps the stored channels. The model-input half of
    :func:`sample_transforms`; the bundles' inference on raw volumes and images applies the same list to
    each slice."""
    image_size = as_int("image_size", image_size, minimum=1)
    missing = as_bool("allow_missing_keys", allow_missing_keys)
    return [
        ScaleToUnitd(image_key, allow_missing_keys=missing),
        *([ToThreeChannelsd(image_key, allow_missing_keys=missing)] if as_bool("three_channels", three_channels) else []),
        Resized(image_key, spatial_size=(image_size, image_size), mode="bilinear", align_corners=False,
                allow_missing_keys=missing),
    ]


def sample_transforms(image_size: int = 1024, output_scale: int = 4, image_key: str = "image",
                      label_key: str = "label", three_channels: bool = True, allow_missing_keys: bool = False) -> Compose:
    """Chain for entries {"image": .npy, "label": .npy, "volume", "slice"} of a prepared datalist.

    Output: image float32 (3, S, S) in [0, 1] with S = image_size (bilinear); label float32
    (L, S/output_scale, S/output_scale) in {0, 1} ("nearest-exact": plain "nearest" shifts by a pixel);
    "slice" becomes an int (-1 for 2D sources). `three_channels=False` keeps the stored channels (1 for
    volumes, 3 for RGB), as nnU-Net does (bundles/nnunet); `allow_missing_keys=True` also takes an entry
    holding only the image or only the label. Bundles use it via
    ``{"_target_": "fedfms.transforms.sample_transforms", "image_size": "@image_size"}``.
    """
    image_size, output_scale = as_int("image_size", image_size, minimum=1), as_int("output_scale", output_scale, minimum=1)
    if image_size % output_scale:
        raise ValueError(f"image_size {image_size} must be a multiple of output_scale {output_scale}")
    keys, missing = [image_key, label_key], as_bool("allow_missing_keys", allow_missing_keys)
    return Compose([
        # keep uint8 vs float16: ScaleToUnitd dispatches on it
        LoadImaged(keys, reader="NumpyReader", channel_dim=0, dtype=None, allow_missing_keys=missing),
        *image_transforms(image_size, image_key, three_channels, missing),
        Resized(label_key, spatial_size=(image_size // output_scale,) * 2, mode="nearest-exact", allow_missing_keys=missing),
        Lambdad("slice", _slice_index, allow_missing_keys=True),
        EnsureTyped(keys, dtype="float32", allow_missing_keys=missing),
    ])

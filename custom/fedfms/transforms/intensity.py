"""Sample-level intensity/channel transforms for prepared 2D samples (the bundles' input side)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RepeatChannel
from monai.utils import convert_to_tensor


def _name(value: object, key: Hashable) -> str:
    """'key' plus the file it was loaded from, if MONAI recorded it (for error messages)."""
    meta = getattr(value, "meta", None) or {}
    source = meta.get("filename_or_obj")
    return f"'{key}'" + (f" ({source})" if source else "")


class ScaleToUnitd(MapTransform):
    """Bring prepared images to float32 in [0, 1]: uint8 (RGB sources) is divided by 255; floating
    input (already percentile-normalized volumes) passes after checking it lies in [0, 1]; any other
    dtype or an out-of-range float is an error naming the key and file.
    """

    def __init__(self, keys: KeysCollection, tolerance: float = 1e-3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.tolerance = tolerance  # float16 storage rounds 1.0 to within ~5e-4

    def __call__(self, data: Mapping[Hashable, torch.Tensor | np.ndarray]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = convert_to_tensor(d[key], track_meta=True)
            if x.dtype == torch.uint8:
                d[key] = x.float() / 255.0
            elif x.is_floating_point():
                lo, hi = float(x.min()), float(x.max())
                if lo < -self.tolerance or hi > 1 + self.tolerance:
                    raise ValueError(f"{_name(d[key], key)}: float image must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")
                d[key] = x.float().clamp(0.0, 1.0)
            else:
                raise ValueError(f"{_name(d[key], key)}: expected uint8 or float in [0, 1], got {x.dtype}")
        return d


class ToThreeChannelsd(MapTransform):
    """Channel-first image -> 3 channels: 1 channel is repeated (MONAI RepeatChannel), 3 pass unchanged,
    anything else is an error. (RepeatChanneld alone would also triple an RGB image.)"""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.repeat = RepeatChannel(3)

    def __call__(self, data: Mapping[Hashable, torch.Tensor | np.ndarray]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            channels = d[key].shape[0]
            if channels == 1:
                d[key] = self.repeat(d[key])
            elif channels != 3:
                raise ValueError(f"{_name(d[key], key)}: expected 1 or 3 channels, got shape {tuple(d[key].shape)}")
        return d

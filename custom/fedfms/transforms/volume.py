"""Volume-level transforms: percentile intensity normalization and depth slicing into 2D samples."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, ScaleIntensityRangePercentilesd


def volume_percentile_normalize(keys: KeysCollection = "image", upper: float = 99.0) -> ScaleIntensityRangePercentilesd:
    """Scale a whole volume to [0, 1]: lower bound = volume minimum, upper = its ``upper``-th percentile, clip.

    MONAI's percentile transform expresses this exactly: its 0th percentile is the minimum (np.percentile
    and torch.quantile both return the smallest element at q = 0). Apply it to the whole channel-first
    volume *before* slicing so every slice shares the volume's statistics. A constant volume maps to 0.
    """
    return ScaleIntensityRangePercentilesd(keys, lower=0.0, upper=upper, b_min=0.0, b_max=1.0, clip=True)


class SliceVolumed(MapTransform):
    """Split channel-first 3D arrays (C, X, Y, Z) along one spatial axis into 2D samples (C, H, W).

    Returns a list of dicts (like MONAI's multi-sample crops). Every output keeps the non-sliced entries
    of the input (e.g. the volume id) and gains ``slice_key`` = slice index in the volume.

    axis: spatial axis to slice along (0, 1 or 2; the channel axis is not counted).
    label_key, empty_slice_stride: if both set, keep only slices whose label has foreground plus every
        ``empty_slice_stride``-th slice (by index) among those without; None keeps every slice.
    """

    def __init__(
        self,
        keys: KeysCollection,
        axis: int = 2,
        slice_key: str = "slice",
        label_key: str | None = None,
        empty_slice_stride: int | None = None,
    ) -> None:
        super().__init__(keys)
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be a spatial axis 0, 1 or 2, got {axis}")
        if empty_slice_stride is not None and (label_key is None or empty_slice_stride < 1):
            raise ValueError("empty_slice_stride needs label_key and a value >= 1")
        self.axis, self.slice_key = axis, slice_key
        self.label_key, self.empty_slice_stride = label_key, empty_slice_stride

    def _selected(self, d: Mapping[Hashable, np.ndarray | torch.Tensor], depth: int) -> list[int]:
        if self.empty_slice_stride is None:
            return list(range(depth))
        label = d[self.label_key]
        reduce_axes = tuple(a for a in range(label.ndim) if a != self.axis + 1)
        has_fg = np.asarray(label != 0).any(axis=reduce_axes)
        return [i for i in range(depth) if has_fg[i] or i % self.empty_slice_stride == 0]

    def __call__(self, data: Mapping[Hashable, np.ndarray | torch.Tensor]) -> list[dict]:
        d = dict(data)
        depths = set()
        for key in self.key_iterator(d):
            if d[key].ndim != 4:
                raise ValueError(f"'{key}': expected a channel-first 3D array (C, X, Y, Z), got shape {tuple(d[key].shape)}")
            depths.add(d[key].shape[self.axis + 1])
        if len(depths) != 1:
            raise ValueError(f"keys {self.keys} differ in depth along axis {self.axis}: {sorted(depths)}")
        samples = []
        for i in self._selected(d, depths.pop()):
            sample = dict(d)
            for key in self.key_iterator(d):
                index = [slice(None)] * 4
                index[self.axis + 1] = i
                sample[key] = d[key][tuple(index)]
            sample[self.slice_key] = i
            samples.append(sample)
        return samples

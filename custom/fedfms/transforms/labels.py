"""Label mapping: raw integer label maps of a public release -> binary label channels.

A :class:`LabelMap` says, per output channel, which raw values are foreground; ``LabelToChannelsd``
applies it and rejects values the release does not define. MONAI's ``LabelFilterd`` keeps chosen values
but neither splits them into named channels nor validates the value set, hence this transform.
For BraTS/FeTS labels, {1, 4} is what MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd`` calls
tumor core (TC) and {4} its enhancing tumor (ET).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform


@dataclass(frozen=True)
class LabelMap:
    """How a release's raw label values become binary channels.

    channels: channel name -> raw values that are foreground in that channel; ``None`` means every
        value > 0 (for instance maps and "label > 0" releases).
    allowed: the raw values the release defines; any other value is an error. ``None`` accepts every
        non-negative integer.
    require_foreground: a case whose mapped label is empty in every channel is an error.
    """

    channels: Mapping[str, Sequence[int] | None]
    allowed: Sequence[int] | None = None
    require_foreground: bool = True
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not self.channels:
            raise ValueError("LabelMap needs at least one channel")
        object.__setattr__(self, "names", tuple(self.channels))

    def validate(self, label: np.ndarray) -> None:
        """Raise ValueError if ``label`` holds values this map does not define."""
        values = np.unique(label)
        bad = values[(values != np.round(values)) | (values < 0)]
        if self.allowed is not None:
            bad = np.union1d(bad, np.setdiff1d(values, np.asarray(self.allowed)))
        if bad.size:
            expected = "non-negative integers" if self.allowed is None else f"values in {sorted(self.allowed)}"
            raise ValueError(f"unknown label values {bad[:10].tolist()} (expected {expected})")

    def __call__(self, label: np.ndarray) -> np.ndarray:
        """Raw label (1, *spatial) or (*spatial) -> uint8 (L, *spatial) in {0, 1}, L = len(channels)."""
        label = np.asarray(label)
        if label.ndim and label.shape[0] == 1:
            label = label[0]
        self.validate(label)
        out = [label > 0 if values is None else np.isin(label, np.asarray(values)) for values in self.channels.values()]
        return np.stack(out).astype(np.uint8)


class LabelToChannelsd(MapTransform):
    """Dictionary transform applying a :class:`LabelMap` (validates values, returns uint8 channels)."""

    def __init__(self, keys: KeysCollection, label_map: LabelMap, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_map = label_map

    def __call__(self, data: Mapping[Hashable, np.ndarray | torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            try:
                d[key] = self.label_map(array)
            except ValueError as exc:
                raise ValueError(f"'{key}': {exc}") from None
        return d

"""nnU-Net's intensity normalization of a frame, as a MONAI transform for validation and inference.

Training batches are preprocessed by nnU-Net's DefaultPreprocessor inside fedfms.nnunet.data. Images
the evaluator sees get the same treatment here: DefaultPreprocessor.run_case_npy crops to the
non-zero region and applies the plan's normalization (per-image z-score, within the non-zero mask
when the plan says use_mask_for_norm); the normalized crop is put back into the full frame, zero
outside it (nnU-Net predicts on the crop and fills the rest with background; predicting the whole
frame keeps the output at the frame size the metrics compare with).
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from fedfms.nnunet.planning import check_plan
from fedfms.nnunet.reader import SPACING_2D


class NnUNetNormalized(MapTransform):
    """Normalize channel-first frames (C, S, S) with a plan's nnU-Net preprocessing (see module doc)."""

    def __init__(self, keys: KeysCollection, plan: Mapping[str, Any], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        check_plan(plan)
        self.plans_manager = PlansManager(copy.deepcopy(plan["plans"]))
        self.configuration = self.plans_manager.get_configuration(plan["configuration"])
        self.dataset_json = plan["dataset_json"]
        self.preprocessor = DefaultPreprocessor(verbose=False)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """(C, S, S) -> (C, S, S) float32, normalized as nnU-Net preprocesses a case."""
        data, _, properties = self.preprocessor.run_case_npy(
            np.asarray(image, dtype=np.float32)[:, None], None, {"spacing": SPACING_2D}, self.plans_manager,
            self.configuration, self.dataset_json)
        out = np.zeros((data.shape[0], *image.shape[1:]), dtype=np.float32)
        bbox = properties["bbox_used_for_cropping"][1:]  # the dummy first axis is never cropped
        out[(slice(None), *(slice(lo, hi) for lo, hi in bbox))] = data[:, 0]
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
            d[key] = convert_to_dst_type(self.normalize(array), image, dtype=torch.float32)[0]
        return d

"""Training batches as nnU-Net makes them, from a fedfms datalist.

nnU-Net preprocesses every case to disk once (crop to the non-zero region, normalize, resample,
foreground locations) and its nnUNetDataLoader then draws batches: random cases (with replacement),
the last 33 % of each batch centred on a foreground pixel, patches of the initial (larger) patch size
padded where needed, then its augmentation down to the patch size, and deep-supervision targets.

Here the same nnUNetDataLoader draws from PreparedCases, which preprocesses a case when it is drawn
with nnU-Net's own DefaultPreprocessor.run_case_npy (crop_to_nonzero, the plan's normalization,
resampling, which is the identity in the image_size frame, foreground locations) instead of reading
nnU-Net's preprocessed folder: a site keeps nothing but its prepared samples, and a 2D sample takes
milliseconds to preprocess.

An epoch is `iterations` batches; fedfms' default is one pass over the training split
(ceil(cases / batch size) batches), where nnU-Net fixes 250 (see bundles/nnunet/docs/README.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from fedfms.bundle.datalist import load_datalist
from fedfms.nnunet.reader import PreparedSampleIO
from fedfms.nnunet.recipe import NnUNetRecipe


class PreparedCases:
    """The cases of a datalist split as nnU-Net's data loader reads them: `identifiers` and
    load_case(identifier) -> (data (C, 1, h, w) float32, seg (1, 1, h, w) int16 with -1 outside the
    non-zero region, None, properties with "class_locations"). Duck-typed to nnUNetBaseDataset, whose
    abstract folder methods (save_case, get_identifiers, unpack_dataset) have no meaning here."""

    def __init__(self, samples: Sequence[dict[str, Any]], recipe: NnUNetRecipe, image_size: int) -> None:
        if not samples:
            raise ValueError("no training samples: the datalist's training split is empty")
        self.samples = list(samples)
        self.identifiers = [f"{i:07d}" for i in range(len(self.samples))]  # nnU-Net sorts identifiers
        self.reader = PreparedSampleIO(image_size)
        self.preprocessor = DefaultPreprocessor(verbose=False)
        trainer = recipe.trainer
        self.plans_manager, self.configuration, self.dataset_json = (
            trainer.plans_manager, trainer.configuration_manager, trainer.dataset_json)

    def load_case(self, identifier: str) -> tuple[np.ndarray, np.ndarray, None, dict]:
        sample = self.samples[int(identifier)]
        data, properties = self.reader.read_images([sample["image"]])
        seg, _ = self.reader.read_seg(sample["label"])
        data, seg, properties = self.preprocessor.run_case_npy(
            data, seg, properties, self.plans_manager, self.configuration, self.dataset_json)
        return data, seg, None, properties


def epoch_length(recipe: NnUNetRecipe, datalist: str | os.PathLike | Sequence[str | os.PathLike],
                 batch_size: int | None = None, iterations: int | None = None, split: str = "training") -> int:
    """Batches per epoch: `iterations` if given, else one pass over the split's cases,
    ceil(cases / batch size) (batch_size None: the plan's)."""
    if iterations is not None:
        if int(iterations) < 1:
            raise ValueError(f"iterations_per_epoch must be >= 1 or null (one pass), got {iterations}")
        return int(iterations)
    batch = recipe.batch_size if batch_size is None else int(batch_size)
    return max(1, math.ceil(len(load_datalist(datalist, split)) / batch))


def training_loader(recipe: NnUNetRecipe, datalist: str | os.PathLike | Sequence[str | os.PathLike], image_size: int,
                    batch_size: int | None = None, num_workers: int = 0, split: str = "training"):
    """nnU-Net's training batch generator over the datalist(s)' split, configured as nnUNetTrainer's
    get_dataloaders configures it (batch_size None: the plan's). num_workers 0 runs in this process
    (SingleThreadedAugmenter), more uses nnU-Net's NonDetMultiThreadedAugmenter with that many
    processes. An infinite iterator of {"data": (B, C, p, p), "target": [deep-supervision targets], "keys"}."""
    trainer = recipe.trainer
    loader = nnUNetDataLoader(
        PreparedCases(load_datalist(datalist, split), recipe, image_size),
        recipe.batch_size if batch_size is None else int(batch_size),
        recipe.initial_patch_size, recipe.patch_size, recipe.label_manager,
        oversample_foreground_percent=trainer.oversample_foreground_percent, sampling_probabilities=None,
        pad_sides=None, transforms=recipe.training_transforms(),
        probabilistic_oversampling=trainer.probabilistic_oversampling)
    if num_workers == 0:
        return SingleThreadedAugmenter(loader, None)
    return NonDetMultiThreadedAugmenter(data_loader=loader, transform=None, num_processes=num_workers,
                                        num_cached=max(6, num_workers // 2), seeds=None,
                                        pin_memory=trainer.device.type == "cuda", wait_time=0.002)

"""nnU-Net's sliding-window prediction as a MONAI inferer returning per-channel logits.

The evaluator (validation, evaluate, inference) hands the whole normalized frame (B, C, S, S) to this
inferer; each image goes through nnU-Net's own nnUNetPredictor.predict_sliding_window_return_logits
(patches of the plan's patch size, tile step 0.5, Gaussian weighting, mirroring test-time
augmentation over the trainer's mirror axes: nnU-Net's inference defaults), with deep supervision
switched off as nnU-Net does for inference. The result, one logit per label channel at the frame
resolution (fedfms.nnunet.labels.channel_logits), is what fedfms' metrics, report and writers read.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from fedfms.nnunet.labels import channel_logits
from fedfms.nnunet.recipe import NnUNetRecipe


class NnUNetInferer(Inferer):
    """recipe: the plan's NnUNetRecipe (plans, label manager, mirror axes, device); use_mirroring:
    nnU-Net's test-time mirroring (4 passes per patch in 2D; False for quick runs)."""

    def __init__(self, recipe: NnUNetRecipe, tile_step_size: float = 0.5, use_gaussian: bool = True,
                 use_mirroring: bool = True) -> None:
        super().__init__()
        self.recipe = recipe
        self.predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=use_gaussian,
                                         use_mirroring=use_mirroring, device=recipe.trainer.device, allow_tqdm=False)

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        trainer = self.recipe.trainer
        inputs = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        self.predictor.manual_initialization(network, trainer.plans_manager, trainer.configuration_manager, None,
                                             trainer.dataset_json, type(trainer).__name__, self.recipe.mirror_axes)
        decoder = network.decoder  # dynamic_network_architectures' UNetDecoder: nnU-Net toggles this flag
        previous, decoder.deep_supervision = decoder.deep_supervision, False
        try:
            # the predictor takes one image (C, 1, H, W) in nnU-Net's pseudo-3D 2D layout
            logits = [self.predictor.predict_sliding_window_return_logits(image[:, None])[:, 0] for image in inputs]
        finally:
            decoder.deep_supervision = previous
        out = torch.stack(logits).float().to(inputs.device)
        return channel_logits(out, self.recipe.label_manager.has_regions)

"""nnU-Net's training recipe, taken from an nnU-Net trainer object built from a fedfms plan.

An nnunetv2 trainer (default nnUNetTrainer; any trainer class of nnunetv2.training.nnUNetTrainer by
name) is constructed from the plan and supplies what it defines: the network (its
build_network_architecture from the plan), the loss (Dice + CE, or Dice + BCE for regions, wrapped in
DeepSupervisionWrapper with weights 1/2^i, lowest output 0), SGD (lr 1e-2, momentum 0.99, Nesterov,
weight decay 3e-5) with PolyLRScheduler, the training step (AMP on CUDA, gradient clipping at 12), the
rotation / mirroring / initial patch size of its data augmentation, its foreground oversampling.
MONAI's SupervisedTrainer runs the loop (fedfms' bundle contract); the trainer object is never asked
to run its own loop, read nnU-Net folders, or save checkpoints.

Changed for fedfms, each in one place:
- num_epochs (the poly schedule length) is the bundle's lr_schedule_epochs, and initial_lr may be
  overridden; the schedule is stepped by the bundle once per epoch with the epoch index.
- the network is not torch.compile'd (nnU-Net does on CUDA): compiling renames state-dict keys, and a
  federated model must have the same tensor names on every participant.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import nnunetv2
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from fedfms.nnunet.environment import nnunet_folders
from fedfms.nnunet.planning import check_plan


def trainer_class(name: str = "nnUNetTrainer") -> type[nnUNetTrainer]:
    """An nnunetv2 trainer class by name, found as nnU-Net's own command line finds it."""
    if name == nnUNetTrainer.__name__:
        return nnUNetTrainer
    found = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), name,
                                        "nnunetv2.training.nnUNetTrainer")
    if found is None or not issubclass(found, nnUNetTrainer):
        raise ValueError(f"trainer_class {name!r} is not an nnunetv2 trainer (nnunetv2.training.nnUNetTrainer)")
    return found


def build_network(plan: Mapping[str, Any], trainer: str = "nnUNetTrainer", deep_supervision: bool = True) -> torch.nn.Module:
    """The plan's 2d network, built as nnU-Net's trainer builds it (its build_network_architecture);
    outputs per head: one logit per region, or background / foreground for one label channel."""
    check_plan(plan)
    plans_manager = PlansManager(copy.deepcopy(plan["plans"]))
    configuration = plans_manager.get_configuration(plan["configuration"])
    return trainer_class(trainer).build_network_architecture(
        plans_manager, configuration,
        determine_num_input_channels(plans_manager, configuration, plan["dataset_json"]),
        plans_manager.get_label_manager(plan["dataset_json"]).num_segmentation_heads,
        deep_supervision,
    )


class NnUNetRecipe:
    """The nnU-Net trainer of a plan, set up to hand its recipe to MONAI engines.

    plan: a fedfms plan (fedfms.nnunet.planning); device: where the training step runs; log_dir: the
    trainer's own log folder (nnU-Net writes a training_log_*.txt there); num_epochs: length of the
    poly learning-rate schedule in epochs; initial_lr: None keeps nnU-Net's 1e-2; trainer: class name.
    """

    def __init__(self, plan: Mapping[str, Any], device: str | torch.device = "cpu", log_dir: str = "nnunet_log",
                 num_epochs: int = 1000, initial_lr: float | None = None, trainer: str = "nnUNetTrainer") -> None:
        check_plan(plan)
        device = torch.device(device)
        if device.type == "cuda" and (device.index or 0) != 0:
            raise ValueError(f"device {device}: nnU-Net's trainer always trains on cuda:0; choose the GPU with "
                             f"CUDA_VISIBLE_DEVICES={device.index} and --device cuda:0")
        if int(num_epochs) < 1:
            raise ValueError(f"num_epochs (the poly schedule length) must be >= 1, got {num_epochs}")
        self.plan, self.trainer_name = plan, trainer
        plans = copy.deepcopy(plan["plans"])
        plans["continue_training"] = False  # nnU-Net's run_training sets this key before building a trainer
        with nnunet_folders(nnUNet_results=os.path.abspath(log_dir)):  # the trainer computes its log folder at init
            self.trainer = trainer_class(trainer)(plans, plan["configuration"], 0, copy.deepcopy(plan["dataset_json"]),
                                                  device)
        self.trainer.num_epochs = int(num_epochs)
        if initial_lr is not None:
            self.trainer.initial_lr = float(initial_lr)
        (self.rotation, self.dummy_2d, self.initial_patch_size,
         self.mirror_axes) = self.trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()

    @property
    def label_manager(self):
        return self.trainer.label_manager

    @property
    def configuration(self):
        return self.trainer.configuration_manager

    @property
    def patch_size(self) -> list[int]:
        return list(self.configuration.patch_size)

    @property
    def batch_size(self) -> int:
        return int(self.configuration.batch_size)

    def _attach(self, network: torch.nn.Module) -> None:
        """Make `network` the trainer's network and build nnU-Net's optimizer, poly schedule and loss for
        it, once per network (the three getters below may be called in any order)."""
        if self.trainer.network is network and self.trainer.optimizer is not None:
            return
        self.trainer.network = network
        self.trainer.optimizer, self.trainer.lr_scheduler = self.trainer.configure_optimizers()
        # nnU-Net's loss recipe lives in this private method; tests/nnunet/test_recipe.py fails if it changes
        self.trainer.loss = self.trainer._build_loss()

    def optimizer(self, network: torch.nn.Module) -> torch.optim.Optimizer:
        """nnU-Net's SGD for `network`."""
        self._attach(network)
        return self.trainer.optimizer

    def lr_scheduler(self, network: torch.nn.Module) -> torch.optim.lr_scheduler.LRScheduler:
        """nnU-Net's PolyLRScheduler of that SGD (step it with the epoch index)."""
        self._attach(network)
        return self.trainer.lr_scheduler

    def loss(self, network: torch.nn.Module) -> torch.nn.Module:
        """nnU-Net's loss with deep supervision for `network`'s outputs."""
        self._attach(network)
        return self.trainer.loss

    def training_transforms(self):
        """nnU-Net's 2D training augmentation (batchgeneratorsv2 ComposeTransforms), with the deep
        supervision targets and regions of this plan, exactly as its get_dataloaders configures it."""
        labels = self.label_manager
        return self.trainer.get_training_transforms(
            self.configuration.patch_size, self.rotation, self.trainer._get_deep_supervision_scales(),
            self.mirror_axes, self.dummy_2d, use_mask_for_norm=self.configuration.use_mask_for_norm,
            is_cascaded=False, foreground_labels=labels.foreground_labels,
            regions=labels.foreground_regions if labels.has_regions else None, ignore_label=labels.ignore_label)

    def train_step(self, engine: Any, batch: Mapping[str, Any]) -> list[dict[str, torch.Tensor]]:
        """One nnU-Net training step on an nnU-Net batch {"data", "target"}, as a MONAI iteration_update.
        Returns the loss in the form of MONAI's decollated output, [{"loss": tensor}], so handlers written
        for the other bundles (from_engine(["loss"], first=True)) read it unchanged."""
        self.trainer.network.train()  # nnU-Net sets train mode per epoch; the evaluator sets eval in between
        return [{"loss": torch.as_tensor(self.trainer.train_step(batch)["loss"])}]

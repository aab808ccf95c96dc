"""Checkpoints of the bundles: atomic saving, and loading trained weights (`ckpt_path`) into a bundle's network for evaluation and inference.

A trained checkpoint may hold every tensor of the network (a bundle's own model.pt) or only the
transmitted ones (FedMSA's global model: adapters, mask decoder, head). The frozen rest then comes from
the site's SAM checkpoint, already loaded when the network was built. MONAI's CheckpointLoader offers
only strict (all keys) or non-strict (silently ignores mismatches) loading; here missing keys are
allowed only outside `transmitted_keys(network)`, and unexpected keys or shape mismatches are errors
(fedfms.networks.load_partial_state).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

from fedfms.networks import CheckpointError, load_partial_state, transmitted_keys
from fedfms.networks.checkpoint import load_torch_file

logger = logging.getLogger(__name__)


def read_trained_state(path: str | os.PathLike, key: str = "model") -> dict[str, torch.Tensor]:
    """Tensors of a trained checkpoint: a flat state dict (a bundle's model.pt), or the `key` entry of
    a nested one (e.g. NVFlare's PTFileModelPersistor writes {"model": ..., "train_conf": ...})."""
    state = load_torch_file(path, "ckpt_path")
    if isinstance(state, dict) and isinstance(state.get(key), dict):
        state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path}: expected a state dict of tensors, flat or under {key!r}")
    return state


def load_trained_weights(network: torch.nn.Module, path: str | os.PathLike, key: str = "model") -> list[str]:
    """Copy the checkpoint's tensors into `network` in place; return the loaded key names.

    Raises CheckpointError naming the file and keys when the checkpoint has keys the network lacks, a
    shape differs (fedfms.networks.load_partial_state), or it lacks any transmitted (trained) key.
    """
    state = read_trained_state(path, key)
    missing = sorted(set(transmitted_keys(network)) - set(state))
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {len(missing)} trained tensors of {type(network).__name__}, e.g. "
            f"{missing[:5]}: was it written for another bundle, model_type or num_classes?"
        )
    load_partial_state(network, state, source=str(path))
    kept = len(set(network.state_dict()) - set(state))
    logger.info(f"loaded {len(state)} tensors from {path}; {kept} kept from the network as built (frozen SAM weights)")
    return sorted(state)


class PartialCheckpointLoader:
    """Ignite handler: load `load_path` into `network` when the engine starts (see load_trained_weights).

    An empty `load_path` ("" or None) keeps the network as built (SAM checkpoint or random init), e.g. to
    evaluate a model before training; on the command line that is `--ckpt_path ""`, because
    `monai.bundle run` drops overrides whose value is None. The class name contains "CheckpointLoader"
    on purpose: monai.fl's MonaiAlgo disables handlers so named, because in federated rounds the
    weights come from the server instead.
    """

    def __init__(self, load_path: str | os.PathLike | None, network: torch.nn.Module, key: str = "model") -> None:
        self.load_path, self.network, self.key = load_path, network, key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.load_path:
            logger.warning("ckpt_path is empty: using the network as built, without trained weights")
            return
        load_trained_weights(self.network, self.load_path, self.key)


class _ReplacingDiskSaver(DiskSaver):
    """Saves under one fixed file name through a temporary file + os.replace. Removing the previous
    version is a no-op: ignite removes the old file before writing the new one, which would leave no
    model at all if the write then failed, and os.replace already overwrites it atomically."""

    def __init__(self, dirname: str, filename: str) -> None:
        super().__init__(dirname=dirname, atomic=True, require_empty=False)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename, metadata)

    def remove(self, filename: str) -> None:
        pass


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's CheckpointSaver whose model.pt / model_final.pt are replaced atomically: readers see the
    previous file or the new one, never a truncated or missing file.

    MONAI builds its savers with ignite's DiskSaver(atomic=False) (atomic files once lacked group/other
    read permission; ignite 0.5 restores those bits) and ignite deletes a fixed-name file before
    rewriting it; here both fixed-name savers are swapped for _ReplacingDiskSaver.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is None:
                continue
            fixed = getattr(checkpoint.save_handler, "filename", None)
            if fixed is not None:
                checkpoint.save_handler = _ReplacingDiskSaver(self.save_dir, fixed)
            else:
                checkpoint.save_handler._atomic = True

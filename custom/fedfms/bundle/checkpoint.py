"""Checkpoints of the bundles: atomic saving, and loading trained weights (`ckpt_path`) into a bundle's
network for evaluation and inference.

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

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from fedfms.core.io import load_tensors
from fedfms.networks import CheckpointError, load_partial_state, transmitted_keys

logger = logging.getLogger(__name__)


def read_trained_state(path: str | os.PathLike, key: str = "model") -> dict[str, torch.Tensor]:
    """Tensors of a trained checkpoint: a flat state dict (a bundle's model.pt), or the `key` entry of
    a nested one (e.g. NVFlare's PTFileModelPersistor writes {"model": ..., "train_conf": ...})."""
    return load_tensors(path, key=key, option="ckpt_path")


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
    `monai.bundle run` drops overrides whose value is None. In a federated job the weights come from the
    server: the site executor sets `ckpt_path` to "" (monai.fl's MonaiAlgo would also disable this
    handler by its class name, which contains "CheckpointLoader").
    """

    def __init__(self, load_path: str | os.PathLike | None, network: torch.nn.Module, key: str = "model") -> None:
        self.load_path, self.network, self.key = load_path, network, key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.load_path:
            logger.info("ckpt_path is empty: using the network as built, without trained weights")
            return
        load_trained_weights(self.network, self.load_path, self.key)


class _ReplacingDiskSaver(DiskSaver):
    """ignite's atomic DiskSaver writing under one fixed file name. Removing the previous version is a
    no-op: ignite's Checkpoint removes the old file before writing the new one, which would leave no
    model at all if the write then failed; the atomic write's os.replace overwrites it instead."""

    def __init__(self, dirname: str, filename: str) -> None:
        super().__init__(dirname=dirname, atomic=True, require_empty=False)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename, metadata)

    def remove(self, filename: str) -> None:
        pass


class AtomicCheckpointSaver:
    """Ignite handler saving `save_dict` (e.g. {"model": network}) like MONAI's CheckpointSaver, under
    fixed file names replaced atomically: readers see the previous file or the new one, never a
    truncated or missing file. (MONAI's saver writes non-atomically and deletes the previous file first.)

    save_final: write `final_filename` (default model_final.pt) when the engine's run completes (a run
        that raises keeps the previous file). save_key_metric: after each epoch, write
        `key_metric_filename` (default model.pt) when the key metric (`key_metric_name`, default the
        engine's `state.key_metric_name`) beats every earlier value. A single saved object is stored as
        its flat state dict, as ignite does.
    """

    def __init__(self, save_dir: str, save_dict: dict, save_final: bool = False, final_filename: str = "model_final.pt",
                 save_key_metric: bool = False, key_metric_filename: str = "model.pt",
                 key_metric_name: str | None = None) -> None:
        self.save_dir, self.save_dict = save_dir, save_dict
        self.final = Checkpoint(save_dict, _ReplacingDiskSaver(save_dir, final_filename), n_saved=1,
                                score_function=lambda engine: engine.state.iteration, score_name="iteration") if save_final else None
        self.best = Checkpoint(save_dict, _ReplacingDiskSaver(save_dir, key_metric_filename), n_saved=1,
                               score_function=self._key_metric, score_name="key_metric") if save_key_metric else None
        self.key_metric_name = key_metric_name

    def _key_metric(self, engine: Engine) -> float:
        return float(engine.state.metrics[self.key_metric_name or engine.state.key_metric_name])

    def attach(self, engine: Engine) -> None:
        if self.final is not None:
            engine.add_event_handler(Events.COMPLETED, self.final)
        if self.best is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.best)

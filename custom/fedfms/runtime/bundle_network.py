"""Reading the MONAI bundle a job carries (``app/config/bundle``): its configuration files, its network."""

from __future__ import annotations

from pathlib import Path
from typing import List, Mapping

import torch
from monai.bundle import ConfigParser
from torch import nn

from fedfms.core.wire import JOB_CONFIG, TRAIN_CONFIG

#: Seed of the initial global model's random tensors (the reference code's seed).
INITIAL_MODEL_SEED = 1337


def config_files(bundle_root: str | Path) -> List[str]:
    """The bundle's training configuration files relative to ``bundle_root``: configs/train.json, then
    the job's settings configs/job.json when the bundle has them (a bundle inside a job)."""
    if not (Path(bundle_root) / TRAIN_CONFIG).is_file():
        raise FileNotFoundError(f"bundle config {Path(bundle_root) / TRAIN_CONFIG} does not exist "
                                "(expected in the job's app/config/bundle)")
    return [TRAIN_CONFIG] + ([JOB_CONFIG] if (Path(bundle_root) / JOB_CONFIG).is_file() else [])


def read_train_config(bundle_root: str | Path) -> ConfigParser:
    """Parse the bundle's training configuration (:func:`config_files`)."""
    parser = ConfigParser()
    parser.read_config([str(Path(bundle_root) / name) for name in config_files(bundle_root)])
    return parser


def uses_sam_checkpoint(bundle_root: str | Path) -> bool:
    """True for the SAM-based bundles (their config defines the ``sam_checkpoint`` id)."""
    return "sam_checkpoint" in read_train_config(bundle_root)


def build_bundle_network(bundle_root: str | Path, overrides: Mapping[str, object], seed: int = INITIAL_MODEL_SEED) -> nn.Module:
    """Instantiate the bundle's ``network_def`` (:func:`read_train_config`, then ``overrides``, e.g. the
    server's sam_checkpoint) on the CPU, with torch seeded by ``seed`` so the randomly initialised
    tensors (adapters, class head) are reproducible. The server builds the initial global model with it,
    so training and aggregation share one definition of the network."""
    parser = read_train_config(bundle_root)
    parser.update({"bundle_root": str(bundle_root), **overrides})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = parser.get_parsed_content("network_def", instantiate=True)
    if not isinstance(network, nn.Module):
        raise TypeError(f"{Path(bundle_root) / TRAIN_CONFIG}: network_def must build a torch.nn.Module, got {type(network).__name__}")
    return network

"""Reading a MONAI bundle that ships inside a job (app/config/bundle/): its network, its overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from monai.bundle import ConfigParser
from torch import nn

TRAIN_CONFIG = "configs/train.json"
EVALUATE_CONFIG = "configs/evaluate.json"
#: Seed of the initial global model's random tensors (the reference code's seed).
INITIAL_MODEL_SEED = 1337


def read_train_config(bundle_root: str | Path) -> ConfigParser:
    """Parse the bundle's configs/train.json (raises FileNotFoundError naming the expected path)."""
    config = Path(bundle_root) / TRAIN_CONFIG
    if not config.is_file():
        raise FileNotFoundError(f"bundle config {config} does not exist (expected in the job's app/config/bundle)")
    parser = ConfigParser()
    parser.read_config(str(config))
    return parser


def uses_sam_checkpoint(bundle_root: str | Path) -> bool:
    """True for the SAM-based bundles (their config defines the ``sam_checkpoint`` id)."""
    return "sam_checkpoint" in read_train_config(bundle_root)


def build_bundle_network(bundle_root: str | Path, overrides: Mapping[str, object], seed: int = INITIAL_MODEL_SEED) -> nn.Module:
    """Instantiate the bundle's ``network_def`` (from configs/train.json) with the job's ``overrides``
    (image_size, model_type, sam_checkpoint, ...), on the CPU, with torch seeded by ``seed`` so the
    randomly initialised tensors (adapters, class head) are reproducible. The server builds the
    initial global model with it, so training and aggregation share one definition of the network."""
    parser = read_train_config(bundle_root)
    parser.update({"bundle_root": str(bundle_root), **overrides})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = parser.get_parsed_content("network_def", instantiate=True)
    if not isinstance(network, nn.Module):
        raise TypeError(f"{Path(bundle_root) / TRAIN_CONFIG}: network_def must build a torch.nn.Module, got {type(network).__name__}")
    return network

"""SAM weights of runs without a pretrained checkpoint (the -PT ablation, or no checkpoint given)."""

from __future__ import annotations

from pathlib import Path

import torch

from fedfms.networks import SAMSegmenter


def random_sam_checkpoint(path: Path, model_type: str, seed: int) -> Path:
    """Write (once) a seeded random-init SAM state dict in the official checkpoint layout and return it.

    Federated runs need it: every participant builds the frozen SAM weights locally and the server
    refuses models built on other frozen weights, so random init must come from one shared file.
    Centralized -PT runs use the bundle's own random init (sam_checkpoint null) instead.
    """
    path = Path(path)
    if path.is_file():
        return path
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SAMSegmenter(model_type=model_type)
    new = set(model.new_keys())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({k: v for k, v in model.state_dict().items() if k not in new}, tmp)
    tmp.replace(path)
    return path

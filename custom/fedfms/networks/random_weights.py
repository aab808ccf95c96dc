"""Seeded random-init SAM weights in the official checkpoint layout.

Runs without a pretrained checkpoint (the demo, the -PT ablation) still need every federated
participant to build the same frozen weights, so random init comes from one shared file.
"""

from pathlib import Path
from typing import Union

import torch

from fedfms.core.io import save_torch_atomic

from .segmenter import SAMSegmenter


def write_random_sam_checkpoint(path: Union[str, Path], model_type: str, seed: int) -> Path:
    """Write (once; an existing file is kept) the state dict of segment_anything's SAM layout at random
    init with ``seed`` to ``path``, atomically, and return the path."""
    path = Path(path)
    if path.is_file():
        return path
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SAMSegmenter(model_type=model_type)
    new = set(model.new_keys())
    return save_torch_atomic({k: v for k, v in model.state_dict().items() if k not in new}, path)

"""Named sets of training settings for a study: the paper's, and a tiny one that runs on a CPU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional


@dataclass(frozen=True)
class Profile:
    """Training settings shared by every run of a study (command-line options override each field).

    model_type: SAM encoder; image_size: None = the paper's 1024 for SAM / the U-Net bundle's 256;
    rounds: federated rounds; local_epochs: local epochs per round (centralized runs train
    rounds x local_epochs epochs, the same number of passes over the data); batch_size: None = the
    paper's per method and dataset (fedfms.federated.jobs.PAPER_BATCH_SIZES); learning_rate: None = the
    bundles' 1e-4 (the paper's); num_workers: data loader workers (None = bundle default);
    cpu_threads: OpenMP threads of each training or evaluation process (None = torch's default, all
    cores; small models on a busy CPU run several times faster with 1, because idle threads spin-wait); checkpoint: the trained model evaluated, "best"
    (highest validation Dice on the source sites) or "final".
    """

    model_type: str
    image_size: Optional[int]
    rounds: int
    local_epochs: int
    batch_size: Optional[int] = None
    learning_rate: Optional[float] = None
    num_workers: Optional[int] = None
    cpu_threads: Optional[int] = None
    checkpoint: str = "best"
    description: str = ""


PROFILES: Dict[str, Profile] = {
    "paper": Profile("vit_b", None, 100, 1, description="the paper's: ViT-B, 1024 px, 100 rounds x 1 local epoch, lr 1e-4"),
    # lr 1e-3 (as tools/demo.py) so two rounds show learning; no loader workers: tiny batches on 2 cores.
    "demo": Profile("vit_tiny", 64, 2, 1, batch_size=4, learning_rate=1e-3, num_workers=0, cpu_threads=1,
                    # final: after two rounds the best by slice Dice can be a model predicting empty masks
                    # (they score 1 on every slice without prostate; its 3D Dice is 0).
                    checkpoint="final",
                    description="CPU smoke profile: vit_tiny, 64 px, 2 rounds x 1 epoch, batch 4, lr 1e-3, final model"),
}


def get_profile(name: str) -> Profile:
    """The registered profile ``name``; ValueError listing the choices otherwise."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; expected one of {list(PROFILES)}")
    return PROFILES[name]

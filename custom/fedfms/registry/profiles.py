"""Training profiles: named sets of training settings that jobs, the study and the demo share.

A profile says how a model is trained (encoder, image size, rounds x local epochs, batch size, learning
rate, ...), not what or where: methods and datasets come from their own registries, and
:func:`bundle_overrides` turns the three into the bundle configuration overrides every participant
applies. ``paper`` reproduces the paper; ``demo`` runs on a CPU in minutes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Dict, Optional, Union

from fedfms.bundle.options import BUNDLE_OPTIONS
from fedfms.core.options import as_choice, as_int
from fedfms.networks.configs import DEFAULT_MODEL_TYPE, ENCODER_CONFIGS, SAM_IMAGE_SIZE

from .datasets import Dataset
from .methods import Method

CHECKPOINTS = ("best", "final")


#: Profile fields that are bundle options of the same name (``fedfms.bundle.options.BUNDLE_OPTIONS``).
BUNDLE_FIELDS = ("image_size", "batch_size", "learning_rate", "num_workers", "cache_rate", "amp", "amp_dtype",
                 "activation_checkpointing")


@dataclass(frozen=True)
class Profile:
    """Training settings (every field can be overridden, e.g. by command-line options).

    name: the profile's name; model_type: SAM encoder (ignored by non-SAM methods); image_size: input
    side, None = 1024 for SAM (the paper's) and the bundle's default otherwise; rounds: federated rounds;
    local_epochs: local epochs per round (centralized runs train rounds x local_epochs epochs, the same
    number of passes over the data); batch_size: None = the paper's per method and dataset
    (``Method.batch_size``); learning_rate, num_workers, cache_rate: None = the bundle's default (the
    paper's 1e-4; 2 loader workers; 0.0, no sample kept in memory after preprocessing; the learning rate is
    Adam's: methods with their own recipe, ``Method.own_recipe``, keep theirs, and their data pipeline);
    cpu_threads: OpenMP threads of each training or evaluation process (None =
    torch's default, all cores; small models on a busy CPU run several times faster with 1, because idle
    threads spin-wait); checkpoint: the trained model a study evaluates, "best" (highest validation Dice
    on the source sites) or "final"; amp / amp_dtype: mixed precision (``fedfms.bundle.precision``: True,
    False or "auto"; "auto", "bfloat16" or "float16"), None = the bundle's default ("auto": on for CUDA
    and for CPUs with native bfloat16); activation_checkpointing: recompute the SAM encoder's blocks in
    the backward pass (less memory, more time; SAM methods only), None = the bundle's default (off);
    description: one line for ``--help``.
    """

    name: str
    model_type: str = DEFAULT_MODEL_TYPE
    image_size: Optional[int] = None
    rounds: int = 100
    local_epochs: int = 1
    batch_size: Optional[int] = None
    learning_rate: Optional[float] = None
    num_workers: Optional[int] = None
    cache_rate: Optional[float] = None
    cpu_threads: Optional[int] = None
    checkpoint: str = "best"
    amp: Optional[Union[bool, str]] = None
    amp_dtype: Optional[str] = None
    activation_checkpointing: Optional[bool] = None
    description: str = ""

    def __post_init__(self) -> None:
        """Check and convert every field (e.g. numbers given as strings); OptionError naming a bad one."""
        typed = {"model_type": as_choice("model_type", self.model_type, ENCODER_CONFIGS),
                 "rounds": as_int("rounds", self.rounds, 1), "local_epochs": as_int("local_epochs", self.local_epochs, 1),
                 "checkpoint": as_choice("checkpoint", self.checkpoint, CHECKPOINTS)}
        if self.cpu_threads is not None:
            typed["cpu_threads"] = as_int("cpu_threads", self.cpu_threads, 1)
        for name in BUNDLE_FIELDS:  # bundle options: checked as the bundles check them
            if getattr(self, name) is not None:
                typed[name] = BUNDLE_OPTIONS[name](name, getattr(self, name))
        for name, value in typed.items():
            object.__setattr__(self, name, value)  # frozen dataclass: store the converted value

    def override(self, **values: object) -> Profile:
        """This profile with the given fields replaced; None values leave a field as it is."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


PROFILES: Dict[str, Profile] = {p.name: p for p in (
    Profile("paper", description="the paper's: ViT-B, 1024 px, 100 rounds x 1 local epoch, lr 1e-4"),
    # lr 1e-3 so two rounds show learning; no loader workers: tiny batches on 2 cores; every sample
    # preprocessed once (small data). Final model: after two rounds the best by slice Dice can be a model
    # predicting empty masks (they score 1 on every slice without prostate; its 3D Dice is 0).
    Profile("demo", model_type="vit_tiny", image_size=64, rounds=2, batch_size=4, learning_rate=1e-3, num_workers=0,
            cache_rate=1.0, cpu_threads=1, checkpoint="final",
            description="CPU smoke profile: vit_tiny, 64 px, 2 rounds x 1 epoch, batch 4, lr 1e-3, final model"),
)}
PAPER = PROFILES["paper"]


def get_profile(name: str) -> Profile:
    """The registered profile ``name``; ValueError listing the choices otherwise."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; expected one of {list(PROFILES)}")
    return PROFILES[name]


def add_profile_option(parser: argparse.ArgumentParser) -> None:
    """The --profile option (default "paper"), the same in every tool that trains."""
    parser.add_argument("--profile", default=PAPER.name, choices=list(PROFILES),
                        help="; ".join(f"{k}: {p.description}" for k, p in PROFILES.items()))


def add_compute_options(parser: argparse.ArgumentParser) -> None:
    """The command-line options of the compute fields (amp, amp_dtype, activation_checkpointing), the
    same in every tool that trains; absent = the profile's value."""
    parser.add_argument("--amp", choices=["auto", "true", "false"],
                        help="mixed precision (autocast); default from the profile, else the bundle's 'auto' "
                             "(on for CUDA and for CPUs with native bfloat16)")
    parser.add_argument("--amp-dtype", choices=["auto", "bfloat16", "float16"],
                        help="autocast dtype (float16: CUDA only); default from the profile, else 'auto'")
    parser.add_argument("--activation-checkpointing", choices=["true", "false"],
                        help="recompute the SAM encoder's blocks in the backward pass (less memory, more time); "
                             "default from the profile, else off")


def compute_overrides(args: argparse.Namespace) -> Dict[str, object]:
    """The compute fields given on the command line (see add_compute_options), for Profile.override."""
    return {"amp": args.amp, "amp_dtype": args.amp_dtype, "activation_checkpointing": args.activation_checkpointing}


def bundle_overrides(method: Method, dataset: Dataset, profile: Profile) -> Dict[str, object]:
    """The bundle configuration overrides that train ``method`` on ``dataset`` with ``profile``: the
    same for a federated job (server and every site) and a centralized run, so both compare like with like."""
    overrides: Dict[str, object] = {"num_classes": dataset.num_classes}
    if method.uses_sam:
        overrides.update(model_type=profile.model_type, image_size=profile.image_size or SAM_IMAGE_SIZE)
    elif profile.image_size:
        overrides["image_size"] = profile.image_size
    batch_size = profile.batch_size or method.batch_size(dataset.name)
    own = method.own_recipe
    optional = {"batch_size": batch_size, "learning_rate": None if own else profile.learning_rate,
                "num_workers": profile.num_workers, "cache_rate": None if own else profile.cache_rate,
                "amp": None if own else profile.amp,
                "amp_dtype": None if own else profile.amp_dtype,
                "activation_checkpointing": profile.activation_checkpointing if method.uses_sam else None}
    overrides.update({k: v for k, v in optional.items() if v is not None})
    if method.lr_schedule:
        overrides["lr_schedule_epochs"] = profile.rounds * profile.local_epochs
    overrides.update(method.profile_overrides.get(profile.name, {}))
    return overrides

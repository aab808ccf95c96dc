"""Loading official SAM checkpoints (and partial trained states) with errors that say what is wrong.

The reference code loads with ``strict=False`` and silently ignores mismatches; here every key of an
official file must be used, and the only model keys it may lack are the ones fedfms adds (adapters,
class head). Nothing is ever downloaded.
"""

from pathlib import Path
from typing import Collection, Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from fedfms.core.io import CheckpointError, load_tensors

from .configs import ENCODER_CONFIGS

PathLike = Union[str, Path]
_SHOWN = 5  # mismatching keys quoted in an error message


def read_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """Read an official SAM state dict (str -> Tensor) from ``path`` on the CPU, without executing pickled code."""
    return load_tensors(path)


def _guess_model_type(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    pos_embed, neck = state.get("image_encoder.pos_embed"), state.get("image_encoder.neck.0.weight")
    if pos_embed is None or neck is None:
        return None
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for name, config in ENCODER_CONFIGS.items():
        if (config.embed_dim, config.depth, config.prompt_embed_dim) == (pos_embed.shape[-1], depth, neck.shape[0]):
            return name
    return None


def _first(keys: List[str]) -> str:
    more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def load_sam_checkpoint(model: nn.Module, path: PathLike, model_type: str, new_keys: Collection[str]) -> None:
    """Load an official SAM state dict into ``model`` (whose SAM parts use ``Sam``'s key names).

    ``new_keys`` are the model's keys that official files do not have (adapters, class head); they
    keep their initialisation. Any other difference raises CheckpointError naming the file and the
    first mismatching keys.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    expected = set(own) - set(new_keys)
    unexpected = sorted(set(state) - set(own))
    missing = sorted(expected - set(state))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(state) & set(own)
        if state[k].shape != own[k].shape
    )
    if unexpected or missing or mismatched:
        guess = _guess_model_type(state)
        if guess is None and not any(k.startswith("image_encoder.") for k in state):
            what = "it is not a SAM checkpoint (no image_encoder.* keys)"
        elif guess is not None and guess != model_type:
            what = f"it looks like a {guess} checkpoint"
        else:
            what = "it does not match the SAM architecture"
        problems = [
            f"{label}: {_first(keys)}"
            for label, keys in (("shape mismatch", mismatched), ("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise CheckpointError(
            f"checkpoint {path} does not fit model_type {model_type!r}: {what}; " + "; ".join(problems)
        )
    _require_finite(state, f"checkpoint {path}")
    model.load_state_dict(state, strict=False)


def _require_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """CheckpointError naming ``source`` and the first tensors holding NaN/inf (a corrupted or diverged file)."""
    bad = [k for k in sorted(state) if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all())]
    if bad:
        raise CheckpointError(f"{source} holds NaN/inf values in {len(bad)} tensors: {_first(bad)}")


def load_partial_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a subset of ``model``'s state (e.g. a FedMSA global model of transmitted tensors only).

    Every key in ``state`` must exist in the model with the same shape; ``source`` names where the
    state came from for the error message.
    """
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and v.shape != own[k].shape
    )
    if unexpected or mismatched:
        problems = [f"{label}: {_first(keys)}" for label, keys in (("unexpected", unexpected), ("shape mismatch", mismatched)) if keys]
        raise CheckpointError(f"state from {source} does not fit {type(model).__name__}: " + "; ".join(problems))
    _require_finite(state, f"state from {source}")
    model.load_state_dict(dict(state), strict=False)

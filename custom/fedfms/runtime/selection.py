"""The one auditable place that decides what crosses the wire, in both directions.

The set of names is ``fedfms.networks.transmitted_keys(network)``: FedMSA's adapters, mask decoder
and class head; FedSAM's trainable SAM weights; the whole U-Net state. Everything else (the frozen
SAM encoder of FedMSA, the prompt encoder, ...) stays at the site and is never sent, by the server
either. The executor calls :func:`check_incoming` on every model it receives and
:func:`select_outgoing` on every model it sends; the server persistor calls :func:`select_outgoing`
on every model it sends. Tensors travel as numpy arrays (NVFlare's default for PyTorch models).
"""

from __future__ import annotations

import hashlib
from typing import Collection, Dict, List, Mapping, Tuple

import numpy as np
import torch
from nvflare.apis.dxo import DXO
from nvflare.fuel.utils import fobs
from torch import nn

from fedfms.networks import transmitted_keys

_SHOWN = 5


class TransmissionError(ValueError):
    """A model about to be sent or just received does not hold exactly the transmitted tensors."""


def _first(names: Collection[str]) -> str:
    names = sorted(names)
    more = f" (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def transmitted_names(network: nn.Module) -> frozenset[str]:
    """The names of the tensors ``network`` exchanges (fedfms.networks.transmitted_keys)."""
    return frozenset(transmitted_keys(network))


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return np.asarray(value)


def select_outgoing(state: Mapping[str, object], names: Collection[str], source: str) -> Dict[str, np.ndarray]:
    """Return exactly the tensors ``names`` of ``state`` (a full or transmitted state dict) as numpy
    arrays, in sorted order. Raises TransmissionError if any of them is missing from ``state``."""
    missing = set(names) - set(state)
    if missing:
        raise TransmissionError(f"{source} lacks transmitted tensors: {_first(missing)}")
    return {name: _as_numpy(state[name]) for name in sorted(names)}


def check_incoming(weights: Mapping[str, object], names: Collection[str], source: str) -> Dict[str, torch.Tensor]:
    """Accept a received model only if it holds exactly the tensors ``names``; return them as tensors.

    A model carrying any other tensor (e.g. a frozen encoder weight) or lacking one is refused with a
    TransmissionError naming ``source`` and the offending names."""
    unexpected, missing = set(weights) - set(names), set(names) - set(weights)
    if unexpected or missing:
        problems = [f"{label}: {_first(keys)}" for label, keys in (("unexpected", unexpected), ("missing", missing)) if keys]
        raise TransmissionError(f"model from {source} is not this site's transmitted state; " + "; ".join(problems))
    return {name: torch.as_tensor(np.asarray(value)) for name, value in weights.items()}


def frozen_fingerprint(state: Mapping[str, torch.Tensor], names: Collection[str]) -> str:
    """SHA-256 over the tensors of ``state`` that are NOT transmitted (name, dtype, shape, values).

    The frozen weights never travel, so each participant loads them from its own SAM checkpoint; the
    server puts its fingerprint in the DXO meta of the models it sends (``fedfms.core.wire.FROZEN_SHA256``) and a site
    refuses a model built on different frozen weights (another checkpoint, or unequal random init)."""
    digest = hashlib.sha256()
    for name in sorted(set(state) - set(names)):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def describe(weights: Mapping[str, object]) -> List[Tuple[str, Tuple[int, ...], str]]:
    """(name, shape, dtype) of every tensor in ``weights``, sorted by name: the audit record."""
    return [(name, tuple(np.shape(value)), str(_as_numpy(value).dtype)) for name, value in sorted(weights.items())]


def serialized_size(dxo: DXO) -> int:
    """Bytes of ``dxo`` serialized the way NVFlare serializes a task result (FOBS, numpy arrays as
    .npy payloads): the size of what a site sends for one round, before transport framing."""
    from nvflare.app_common.decomposers import common_decomposers

    common_decomposers.register()
    return len(fobs.dumps(dxo.to_shareable()))

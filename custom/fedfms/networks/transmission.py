"""The one place that decides which tensors leave a site: its transmitted state."""

from typing import Dict, List

import torch
from torch import nn


def transmitted_keys(model: nn.Module) -> List[str]:
    """State-dict keys a site trains and sends. Models that define ``transmitted_keys()`` (the SAM
    segmenters) decide themselves; any other module (e.g. MONAI's U-Net) sends its whole state dict,
    BatchNorm statistics included."""
    own = getattr(model, "transmitted_keys", None)
    return list(own()) if callable(own) else list(model.state_dict())


def transmitted_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The transmitted tensors of ``model``, detached, keyed by state-dict name."""
    keys = set(transmitted_keys(model))
    return {name: tensor.detach() for name, tensor in model.state_dict().items() if name in keys}

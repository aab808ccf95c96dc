"""Mixed precision for the bundles: the bundle options ``amp`` and ``amp_dtype`` -> what runs in which dtype.

Autocast runs the network's matrix products in bfloat16 or float16 while parameters, gradients,
optimizer state, the loss and everything after the network stay float32 (so what a site saves or
sends is float32 whatever the compute dtype). Defaults (``"auto"``), decided by measurement (README,
"Efficiency"):

- CUDA: on, bfloat16 where the GPU supports it natively, float16 (with MONAI's GradScaler) otherwise.
- CPU: on (bfloat16) only where the CPU computes bfloat16 natively (AVX512-BF16 or AMX). Without it
  autocast is emulated and much slower (a ViT-B step about 10x slower on this project's AVX2 CPU).
- Other devices: off.

MONAI 1.6.1's engines autocast only ``"cuda"`` (their ``amp`` flag), so the bundles autocast in their
inferer (``AutocastInferer``, any device) and set the trainer's ``amp`` only for float16, which needs
MONAI's GradScaler against underflowing gradients.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, Union

import torch
from monai.inferers import SimpleInferer
from monai.utils import convert_to_tensor

from fedfms.core.options import OptionError, as_bool, as_choice

#: ``amp_dtype`` values (strings in the JSON configs) and the dtypes they mean.
AMP_DTYPES: Dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_amp(name: str, value: Union[bool, str]) -> Union[bool, str]:
    """``amp`` as given in a config or on the command line -> True, False or "auto" (a boolean in any
    spelling fedfms.core.options.as_bool reads: a command-line 'false' must not count as true)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return as_bool(name, value)
    except OptionError:
        raise OptionError(f"option {name}={value!r}: expected true, false or auto") from None


def parse_amp_dtype(name: str, value: str) -> str:
    """``amp_dtype`` checked: "auto" or a key of AMP_DTYPES."""
    return as_choice(name, value, ("auto", *AMP_DTYPES))


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles)."""
    # Private torch.cpu helpers, the only query torch offers (tests/bundles/test_precision.py fails if they go).
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


@dataclass(frozen=True)
class Precision:
    """Resolved compute precision: autocast on ``device_type`` to ``dtype`` when ``enabled``."""

    enabled: bool
    dtype: torch.dtype
    device_type: str

    @property
    def needs_grad_scaler(self) -> bool:
        """float16 gradients underflow without loss scaling; bfloat16 has float32's range."""
        return self.enabled and self.dtype == torch.float16

    def amp_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for MONAI's ``amp_kwargs`` / ``torch.autocast``."""
        return {"dtype": self.dtype}

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    def describe(self) -> str:
        return f"autocast {str(self.dtype).replace('torch.', '')} on {self.device_type}" if self.enabled else "float32"


def resolve_precision(
    amp: Union[bool, str] = "auto", amp_dtype: str = "auto", device: Union[str, torch.device] = "cpu"
) -> Precision:
    """The bundle options -> a ``Precision`` for ``device`` (see the module docstring for "auto").

    Raises ValueError naming the option for a value other than those listed, and for float16 on a
    CPU (MONAI's trainer has no CPU GradScaler: use bfloat16 there).
    """
    device = torch.device(device)
    enabled = parse_amp("amp", amp)
    amp_dtype = parse_amp_dtype("amp_dtype", amp_dtype)
    if enabled == "auto":
        enabled = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bfloat16())
    if not enabled:
        return Precision(False, torch.float32, device.type)
    if amp_dtype != "auto":
        dtype = AMP_DTYPES[amp_dtype]
    elif device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    else:
        dtype = torch.bfloat16
    if dtype == torch.float16 and device.type != "cuda":
        raise OptionError(f"option amp_dtype float16 needs a CUDA device (gradient scaling), got device {device}; "
                         "use amp_dtype bfloat16")
    return Precision(True, dtype, device.type)


class AutocastInferer(SimpleInferer):
    """MONAI's ``SimpleInferer`` with the network run under ``precision``'s autocast.

    The network gets a plain tensor: MONAI's MetaTensor would route each of its torch operations through
    Python (``__torch_function__``) to carry metadata the network never uses, which made a local
    training round of the demo's vit_tiny 23% slower on CPU. The output is returned as float32, so the
    loss, metrics and writers never see a half-precision tensor. Used for training and validation alike.
    """

    def __init__(self, precision: Precision) -> None:
        super().__init__()
        self.precision = precision

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        with self.precision.autocast():
            output = super().__call__(convert_to_tensor(inputs, track_meta=False), network, *args, **kwargs)
        return output.float()

"""One finiteness check for every model that crosses the wire or is persisted.

The server's aggregator (site results), the server's persistor (each aggregated global model before it is
saved) and every site's executor (each global model it receives) call :func:`nonfinite` on a
``{name: tensor}`` dict (numpy arrays or torch tensors) and refuse the model when it names a tensor.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import torch


class NonFiniteModelError(ValueError):
    """A model holds NaN or inf values; the message names the model, the tensor and the count."""


def nonfinite(weights: Mapping[str, object]) -> Optional[str]:
    """'tensor NAME holds N non-finite values (of M tensors, K affected)' for the first floating-point tensor
    (in name order) holding NaN/inf, or None when every value is finite. Integer tensors are skipped."""
    bad = {}
    for name in sorted(weights):
        value = weights[name]
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad[name] = int((~torch.isfinite(value)).sum())
        else:
            array = np.asarray(value)
            if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
                bad[name] = int((~np.isfinite(array)).sum())
    if not bad:
        return None
    first = next(iter(bad))
    return f"tensor {first} holds {bad[first]} non-finite values ({len(bad)} of {len(weights)} tensors affected)"


def require_finite(weights: Mapping[str, object], what: str) -> None:
    """Raise NonFiniteModelError naming ``what`` (e.g. "global model of round 3") if a value is NaN/inf."""
    reason = nonfinite(weights)
    if reason:
        raise NonFiniteModelError(f"{what} is not finite: {reason}")

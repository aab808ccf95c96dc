"""Half-precision transfer: a DXO filter pair that halves the bytes of every model on the wire.

``ToHalfPrecision`` casts the float32 tensors of a WEIGHTS DXO to float16 (sites: on their results;
server: on the global model it sends); ``ToFullPrecision`` casts float16 back to float32 on the
receiving side, before the aggregator or the site's bundle sees the model. Other dtypes (e.g. the
U-Net's int64 BatchNorm counters) pass unchanged. Rounding error: relative 2**-11 per value. A site
result's ``bytes_sent`` (the round report's figure) is re-measured after the cast.

Values beyond float16's range (|x| > 65504) become inf on purpose, not clamped: the server's
``GuardedAggregator`` then rejects that site's update as non-finite instead of averaging a silently
clipped weight.

Why not NVFlare's ModelQuantizer/ModelDequantizer (nvflare.app_opt.pt.quantization): their modules
import bitsandbytes at import time even for "float16", and bitsandbytes is a GPU library not in this
project's environment; the float16 cast they would do is the one line below.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from fedfms.core.wire import BYTES_SENT

from .selection import serialized_size


def _cast(dxo: DXO, source: type, target: type) -> DXO:
    with np.errstate(over="ignore"):  # overflow to inf is intended (see module docstring)
        dxo.data = {name: value.astype(target) if isinstance(value, np.ndarray) and value.dtype == source else value
                    for name, value in dxo.data.items()}
    return dxo


class ToHalfPrecision(DXOFilter):
    """Filter: float32 numpy tensors of a WEIGHTS DXO -> float16 (put on the sending side)."""

    def __init__(self):
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS], data_kinds_to_filter=[DataKind.WEIGHTS])

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> Optional[DXO]:
        dxo = _cast(dxo, np.float32, np.float16)
        if dxo.get_meta_prop(BYTES_SENT) is not None:  # a site's result: report what is really sent
            # measured with the float32 figure still in place: it encodes in as many bytes as the new one
            size = serialized_size(dxo)
            dxo.set_meta_prop(BYTES_SENT, size)
            if fl_ctx is not None:
                self.log_info(fl_ctx, f"sending float16: {size} bytes")
        return dxo


class ToFullPrecision(DXOFilter):
    """Filter: float16 numpy tensors of a WEIGHTS DXO -> float32 (put on the receiving side)."""

    def __init__(self):
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS], data_kinds_to_filter=[DataKind.WEIGHTS])

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> Optional[DXO]:
        return _cast(dxo, np.float16, np.float32)

"""Fault injection for drills, tests and measurements: a site-side result filter that turns a site's train
results into the faults and lies the server must survive. Never part of a generated job: the tests and
``tools/measure_robustness.py`` add it to a job explicitly.

Modes (applied to the train results of ``site`` in ``rounds``, or every round when ``rounds`` is empty):

- ``nan``: one NaN in every tensor;
- ``scale``: the update w_k - w_global multiplied by ``factor`` (a diverged site; ``factor`` < 0 reverses it);
- ``samples``: the reported sample count n_k replaced by ``samples`` (NaN, inf, negative or huge);
- ``float64``: every tensor sent as float64;
- ``drop_meta``: the result's training loss and bytes-sent meta removed;
- ``sleep``: the result held back ``seconds`` before it is sent (a hung or slow site).

``scale`` needs the global model the site received: put ``FaultTap`` in the site's task-data filters.
"""

from __future__ import annotations

import threading
import time
from typing import Dict, Optional, Sequence

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from fedfms.core.wire import BYTES_SENT, TRAIN_LOSS

MODES = ("nan", "scale", "samples", "float64", "drop_meta", "sleep")
_RECEIVED: Dict[str, tuple] = {}  # site -> (round, global model received for the train task)
_LOCK = threading.Lock()


class FaultTap(DXOFilter):
    """Task-data filter: remembers the round and global model of each train task (unchanged)."""

    def __init__(self):
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS], data_kinds_to_filter=[DataKind.WEIGHTS])

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> Optional[DXO]:
        if fl_ctx.get_prop(FLContextKey.TASK_NAME) == AppConstants.TASK_TRAIN:
            round_ = int(shareable.get_header(AppConstants.CURRENT_ROUND, 0))
            with _LOCK:
                _RECEIVED[fl_ctx.get_identity_name()] = (round_, {k: np.array(v) for k, v in dxo.data.items()})
        return dxo


class FaultInjection(DXOFilter):
    """Task-result filter: the fault ``mode`` on the train results of ``site`` in ``rounds`` (see module doc).

    Args:
        site: client name; mode: one of MODES; rounds: rounds to corrupt (empty: all); factor: for "scale";
        samples: for "samples" (a float, so NaN / inf can be given); seconds: for "sleep".
    """

    def __init__(self, site: str, mode: str, rounds: Sequence[int] = (), factor: float = 100.0,
                 samples: float = 1e6, seconds: float = 60.0):
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS], data_kinds_to_filter=[DataKind.WEIGHTS])
        if mode not in MODES:
            raise ValueError(f"unknown fault mode {mode!r}; expected one of {MODES}")
        self.site, self.mode, self.rounds = site, mode, list(rounds)
        self.factor, self.samples, self.seconds = float(factor), float(samples), float(seconds)

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> Optional[DXO]:
        site = fl_ctx.get_identity_name()
        if site != self.site or fl_ctx.get_prop(FLContextKey.TASK_NAME) != AppConstants.TASK_TRAIN:
            return dxo
        with _LOCK:
            round_, received = _RECEIVED.get(site, (None, None))
        if self.rounds and round_ not in self.rounds:
            return dxo
        self.log_warning(fl_ctx, f"FAULT INJECTION: {self.mode} on the round {round_} result of {site}")
        if self.mode == "nan":
            dxo.data = {k: _with_nan(v) for k, v in dxo.data.items()}
        elif self.mode == "scale":
            if received is None:
                raise RuntimeError("fault mode 'scale' needs FaultTap in the site's task-data filters")
            dxo.data = {k: (received[k] + self.factor * (np.asarray(v) - received[k])).astype(np.asarray(v).dtype)
                        for k, v in dxo.data.items()}
        elif self.mode == "samples":
            n = self.samples
            dxo.set_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, int(n) if np.isfinite(n) and float(n).is_integer() else n)
        elif self.mode == "float64":
            dxo.data = {k: np.asarray(v, np.float64) for k, v in dxo.data.items()}
        elif self.mode == "drop_meta":
            dxo.meta.pop(TRAIN_LOSS, None)
            dxo.meta.pop(BYTES_SENT, None)
        elif self.mode == "sleep":
            time.sleep(self.seconds)
        return dxo


def _with_nan(value) -> np.ndarray:
    value = np.array(value, copy=True)
    value.reshape(-1)[0] = np.nan
    return value

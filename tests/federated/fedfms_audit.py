"""Test-only NVFlare filter, shipped in a test job's app/custom/: records every model that reaches or
leaves a site (names, shapes, dtypes, values, meta) so the tests can audit exactly what crossed the wire."""

import json
import os
import threading

import numpy as np
from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLContextKey

_lock = threading.Lock()
_counts = {}


class AuditFilter(Filter):
    def __init__(self, direction: str, out_dir: str):
        super().__init__()
        self.direction, self.out_dir = direction, out_dir

    def process(self, shareable, fl_ctx):
        dxo = from_shareable(shareable)
        site = fl_ctx.get_identity_name()
        task = fl_ctx.get_prop(FLContextKey.TASK_NAME)
        with _lock:
            key = (site, self.direction, task)
            index = _counts[key] = _counts.get(key, -1) + 1
        stem = os.path.join(self.out_dir, f"{site}.{self.direction}.{task}.{index}")
        os.makedirs(self.out_dir, exist_ok=True)
        np.savez(stem + ".npz", **{name: np.asarray(value) for name, value in dxo.data.items()})
        meta = {k: v for k, v in dxo.meta.items() if isinstance(v, (int, float, str, dict, list))}
        with open(stem + ".json", "w") as handle:
            json.dump({"kind": dxo.data_kind, "meta": meta}, handle, default=str)
        return shareable

"""Test-only NVFlare filters, shipped in a test job's app/custom/: AuditFilter records every model that
reaches or leaves a site (names, shapes, dtypes, values, meta) so the tests can audit exactly what
crossed the wire; CorruptFilter turns one site's result of one round into a bad update."""

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
        # numbered by the records already there: the simulator may run a site's tasks in new processes
        # (more sites than threads), and a site runs one task at a time
        os.makedirs(self.out_dir, exist_ok=True)
        prefix = f"{site}.{self.direction}.{task}."
        index = sum(name.startswith(prefix) and name.endswith(".json") for name in os.listdir(self.out_dir))
        stem = os.path.join(self.out_dir, f"{prefix}{index}")
        np.savez(stem + ".npz", **{name: np.asarray(value) for name, value in dxo.data.items()})
        meta = {k: v for k, v in dxo.meta.items() if isinstance(v, (int, float, str, dict, list))}
        with open(stem + ".json", "w") as handle:
            json.dump({"kind": dxo.data_kind, "meta": meta}, handle, default=str)
        return shareable


class CorruptFilter(Filter):
    """Corrupts the train result number ``index`` of ``site``: "nan" puts a NaN in every tensor,
    "scale" multiplies every tensor by 100 (a diverged update). Other results pass unchanged."""

    def __init__(self, site: str, index: int, mode: str):
        super().__init__()
        self.site, self.index, self.mode = site, index, mode

    def process(self, shareable, fl_ctx):
        site = fl_ctx.get_identity_name()
        if site != self.site or fl_ctx.get_prop(FLContextKey.TASK_NAME) != "train":
            return shareable
        with _lock:
            key = (site, "corrupt")
            index = _counts[key] = _counts.get(key, -1) + 1
        if index != self.index:
            return shareable
        dxo = from_shareable(shareable)
        for name, value in dxo.data.items():
            value = np.array(value, copy=True)
            if self.mode == "nan":
                value.reshape(-1)[0] = np.nan
            else:
                value = value * 100
            dxo.data[name] = value
        return dxo.update_shareable(shareable)

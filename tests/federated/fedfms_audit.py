"""Test-only NVFlare filters, shipped in a test job's app/custom/: AuditFilter records every model that
reaches or leaves a site (names, shapes, dtypes, values, meta) so the tests can audit exactly what
crossed the wire; CorruptFilter turns one site's result of one round into a bad update."""

import json
import os
import threading

import numpy as np
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.shareable import ReservedHeaderKey

_lock = threading.Lock()
_counts = {}


def _arrays(dxo) -> bool:
    """WEIGHTS, or a payload of arrays (the int8 codec's APP_DEFINED DXO): recorded as .npz."""
    return dxo.data_kind == DataKind.WEIGHTS or (bool(dxo.data) and all(isinstance(v, np.ndarray) for v in dxo.data.values()))


class AuditFilter(Filter):
    """Records SITE.DIRECTION.TASK.N.json: the DXO's kind and meta, the shareable's payload keys (all but
    NVFlare's headers), the return code and fedfms' error header; for a DXO of WEIGHTS or of arrays (the
    int8 codec's payload) the tensors go to .npz, for any other DXO (the planning step's fingerprint and plan) the data into the JSON as they are
    (json.dump fails on anything that is not plain JSON: arrays or bytes would stop the run). A reply
    without a DXO (an error, or the plan task's bare acknowledgement) records no data."""

    def __init__(self, direction: str, out_dir: str):
        super().__init__()
        self.direction, self.out_dir = direction, out_dir

    def process(self, shareable, fl_ctx):
        site = fl_ctx.get_identity_name()
        task = fl_ctx.get_prop(FLContextKey.TASK_NAME)
        # numbered by the records already there: the simulator may run a site's tasks in new processes
        # (more sites than threads), and a site runs one task at a time
        os.makedirs(self.out_dir, exist_ok=True)
        prefix = f"{site}.{self.direction}.{task}."
        index = sum(name.startswith(prefix) and name.endswith(".json") for name in os.listdir(self.out_dir))
        stem = os.path.join(self.out_dir, f"{prefix}{index}")
        record = {"payload_keys": sorted(k for k in shareable if k != ReservedHeaderKey.HEADERS),
                  "return_code": shareable.get_return_code(), "error": shareable.get_header("fedfms_error"),
                  "kind": None, "meta": {}}
        try:
            dxo = from_shareable(shareable)
        except ValueError:  # not a DXO
            dxo = None
        if dxo is not None:
            record["kind"] = dxo.data_kind
            record["meta"] = {k: v for k, v in dxo.meta.items() if isinstance(v, (int, float, str, dict, list))}
            if _arrays(dxo):
                np.savez(stem + ".npz", **{name: np.asarray(value) for name, value in dxo.data.items()})
            else:
                record["data"] = dxo.data
        with open(stem + ".json", "w") as handle:
            json.dump(record, handle, default=str if dxo is None or _arrays(dxo) else None)
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

"""Test-only NVFlare pieces of the privacy POC test, shipped in the job's app/custom/: a job that tries
to send a frozen encoder weight, once from its executor (before the site's privacy filter) and once
from a job result filter (which NVFlare runs after the site's filter), and a server-side filter that
records every result arriving at the server (site, task, return code, tensor names, shapes, dtypes)."""

import json
import os
import threading

import numpy as np
from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.shareable import ReservedHeaderKey

from fedfms.runtime.executor import BundleExecutor

#: frozen in FedMSA: the site's fedmsa scope must stop it
LEAKED = "image_encoder.patch_embed.proj.weight"
_lock = threading.Lock()


def _is_train_ok(shareable, fl_ctx, site):
    return (fl_ctx.get_identity_name() == site and fl_ctx.get_prop(FLContextKey.TASK_NAME) == "train"
            and shareable.get_return_code() == ReturnCode.OK)


class LeakyExecutor(BundleExecutor):
    """BundleExecutor whose train results at ``leak_site`` also carry the site's real encoder weight."""

    def __init__(self, leak_site: str, **kwargs):
        super().__init__(**kwargs)
        self.leak_site = leak_site

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        reply = super().execute(task_name, shareable, fl_ctx, abort_signal)
        if _is_train_ok(reply, fl_ctx, self.leak_site):
            dxo = from_shareable(reply)
            dxo.data[LEAKED] = self.trainer_algo.trainer.network.state_dict()[LEAKED].detach().cpu().numpy()
            dxo.update_shareable(reply)
            self.log_info(fl_ctx, f"TEST: the executor added {LEAKED} to its result")
        return reply


class LateLeakFilter(Filter):
    """A job result filter adding a tensor named like the encoder weight to ``leak_site``'s train results."""

    def __init__(self, leak_site: str):
        super().__init__()
        self.leak_site = leak_site

    def process(self, shareable, fl_ctx):
        if _is_train_ok(shareable, fl_ctx, self.leak_site):
            dxo = from_shareable(shareable)
            dxo.data[LEAKED] = np.ones((64, 3, 16, 16), np.float32)
            dxo.update_shareable(shareable)
            self.log_info(fl_ctx, f"TEST: a job filter added {LEAKED} to the result")
        return shareable


class ServerResultAudit(Filter):
    """Server-side result filter (first of the chain): appends one JSON line per arriving result."""

    def __init__(self, out_file: str):
        super().__init__()
        self.out_file = out_file

    def process(self, shareable, fl_ctx):
        peer = fl_ctx.get_peer_context()
        task = shareable.get_header(ReservedHeaderKey.TASK_NAME) or fl_ctx.get_prop(FLContextKey.TASK_NAME)
        record = {"site": peer.get_identity_name() if peer else "?", "task": task,
                  "rc": shareable.get_return_code(), "content": sorted(k for k in shareable if k != "__headers__")}
        try:
            dxo = from_shareable(shareable)
            record["kind"] = str(getattr(dxo.data_kind, "value", dxo.data_kind))
            record["tensors"] = {k: [list(np.shape(v)), str(np.asarray(v).dtype)] for k, v in dxo.data.items()}
            record["meta"] = sorted(dxo.meta)
        except ValueError:  # no DXO: an error reply
            record["kind"] = None
        with _lock:
            os.makedirs(os.path.dirname(self.out_file), exist_ok=True)
            with open(self.out_file, "a") as handle:
                handle.write(json.dumps(record, default=str) + "\n")
        return shareable

"""Smaller models on the wire, both directions: int8 deltas with error feedback (optionally top-k), and
FedSCA-style partial upload. Four NVFlare filters, configured by the job generator on the "train" task
(other tasks, e.g. cross-site evaluation, pass unchanged):

====================  ==================  =========================================================
filter                where               does
====================  ==================  =========================================================
``SendUpdate``        site, task result   u = trained - received model, on the tensors the site sends
                      (last of the chain)   (all, or ``codec.upload_names(K)``); sends codec(u + e) and
                                            keeps e = what the payload did not carry (error feedback,
                                            kept for the job); without int8: just drops the
                                            tensors partial upload holds back
``ReceiveUpdate``     server, task result  weights = global model + decoded update: full WEIGHTS again
                      (first)               (of the sent tensors) before the aggregator sees them
``SendGlobalModel``   server, task data    the global model as an int8 delta against the model every
                      (last)                site holds (the previous round's, as the sites decoded it);
                                            the full model in the first round and to any site that did
                                            not receive the previous one
``ReceiveGlobalModel`` site, task data     rebuilds the full global model (WEIGHTS for the executor),
                      (first)               keeps it as the next round's base and as the reference of
                                            this round's update
====================  ==================  =========================================================

**Payload** (what ``SendUpdate`` and ``SendGlobalModel`` put on the wire when int8 is on): a DXO of
``DataKind.APP_DEFINED`` (so filters for WEIGHTS, e.g. the float16 pair, leave it alone) whose data
holds, per tensor NAME that is sent, ``NAME`` (int8), ``NAME:scale`` (float32) and, with top-k,
``NAME:mask`` (uint8 packed bits); non-floating tensors travel as their exact delta under ``NAME`` in
their own dtype (layout in ``fedfms.runtime.codec``). Meta: everything the executor put there
(NUM_STEPS_CURRENT_ROUND = n_k, INITIAL_METRICS, train_loss, bytes_sent re-measured on the payload)
plus ``fedfms_codec`` (``fedfms.core.wire.CODEC``): {"format": "int8-delta", "scale", "fraction",
"shapes", "dtypes", "base_sha256"}. The tensor names are the transmitted names (or the partial-upload
subset); a site-side policy can check them by stripping the ``:scale`` / ``:mask`` suffixes.
Without int8 (partial upload alone) the result stays a WEIGHTS DXO of float32 tensors, fewer of them.

**Where each side gets its reference.** Site: ``ReceiveGlobalModel`` records the model it handed to the
executor in the task's FL context (``RECEIVED_MODEL``; the same context runs through data filters,
executor and result filters of one task), where ``SendUpdate`` reads it. Server: ``ReceiveUpdate`` adds
the update to the global model of the round (``AppConstants.GLOBAL_MODEL``, which ScatterAndGather keeps
as a sticky FL-context property), not to the sites' copy: the download's rounding error is then carried
in the next round's delta (the sites' copy chases the server's model), i.e. error feedback on the
download too. ``SendGlobalModel`` tracks the sites' copy itself (every site decodes the same payload, so
all hold the same model); each delta names the SHA-256 of its base and a site whose copy differs refuses
it with an error. The server then sends that site the full model in the next round (``ReceiveUpdate``
tells ``SendGlobalModel`` about a failed result through a sticky FL-context property, ``DOWNLINK``).

**Site state across restarts.** A site's copy of the global model and its residual live in the filters'
memory and are mirrored, after every round, in the site's run folder (``MODEL_FILE``, ``RESIDUAL_FILE``,
numpy .npz written atomically, read without pickle), so a restarted client process resumes them. NVFlare's
simulator needs this: with fewer threads than sites it re-creates a client's components between tasks.
The server's state is memory only: after a server restart every site gets the whole model once.

Composition with half precision: ``ToHalfPrecision`` runs before ``SendGlobalModel`` (full models go as
float16, deltas are taken against the float16 model the sites hold) and after ``SendUpdate`` (where it
finds no WEIGHTS to cast unless int8 is off).

Why not NVFlare's ModelQuantizer / ModelDequantizer (nvflare.app_opt.pt.quantization): their modules
import bitsandbytes (a GPU library not in this environment) at import time, their 8-bit modes need a
GPU, and they quantize absolute weights without error feedback or deltas.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants

from fedfms.core.io import atomic_path
from fedfms.core.wire import BYTES_SENT, CODEC

from .codec import Codec, CodecError, compress_with_feedback, decode, fingerprint, upload_names
from .selection import serialized_size

#: Compression choices: "none" (weights as they are) or "int8" (int8 deltas, optionally top-k).
COMPRESSIONS = ("none", "int8")
#: FL context property (site, one task): the full model ReceiveGlobalModel handed to the executor.
RECEIVED_MODEL = "fedfms_received_model"
#: FL context property (server, sticky): SendGlobalModel's record of which site holds which round's model.
DOWNLINK = "fedfms_downlink"
#: Files in a site's run folder mirroring its transfer state (its copy of the global model, its error
#: feedback residual), so a restarted client process resumes it; NVFlare's simulator also re-creates a
#: client's components between tasks when it runs more sites than threads.
MODEL_FILE, RESIDUAL_FILE = "fedfms_received_model.npz", "fedfms_update_residual.npz"
_STATE_META = "__fedfms_state__"
_FORMAT = "int8-delta"
_TRAIN = AppConstants.TASK_TRAIN


def _site(fl_ctx: FLContext) -> str:
    peer = fl_ctx.get_peer_context()
    return peer.get_identity_name(default="?") if peer else fl_ctx.get_identity_name(default="?")


def _as_float32(weights: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Copies of ``weights`` with floating tensors as float32 (the reference both sides hold)."""
    return {name: np.array(value, np.float32 if np.issubdtype(np.asarray(value).dtype, np.floating) else None)
            for name, value in weights.items()}


def _apply(base: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """base + delta for the tensors of delta, in base's dtypes (the same arithmetic on server and site)."""
    return {name: (np.asarray(base[name]) + value).astype(np.asarray(base[name]).dtype, copy=False)
            for name, value in delta.items()}


def _codec(compression: str, scale: str, fraction: float) -> Optional[Codec]:
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; expected one of {COMPRESSIONS}")
    if compression == "none" and fraction:
        raise ValueError("top-k needs compression='int8' (the kept values are sent as int8)")
    return Codec(scale, fraction) if compression == "int8" else None


def _payload(data: dict, layout: dict, base_sha256: str, meta: Mapping) -> DXO:
    codec_meta = {"format": _FORMAT, **layout, "base_sha256": base_sha256}
    return DXO(DataKind.APP_DEFINED, data, {**meta, CODEC: codec_meta})


def _unpack(dxo: DXO, what: str) -> dict:
    layout = dxo.get_meta_prop(CODEC)
    if not isinstance(layout, dict) or layout.get("format") != _FORMAT:
        raise CodecError(f"{what}: an APP_DEFINED DXO without a {_FORMAT} layout in meta {CODEC!r}")
    return layout


def _without_codec(meta: Mapping) -> dict:
    return {k: v for k, v in meta.items() if k != CODEC}


def _state_file(fl_ctx: FLContext, name: str) -> Optional[Path]:
    """``name`` in this participant's run folder; None outside a running job (e.g. in-process tests)."""
    engine = fl_ctx.get_engine()
    return Path(engine.get_workspace().get_run_dir(fl_ctx.get_job_id())) / name if engine is not None else None


def _save_state(path: Optional[Path], arrays: Mapping[str, np.ndarray], **meta) -> None:
    if path is not None:
        with atomic_path(path) as tmp:
            np.savez(tmp, **arrays, **{_STATE_META: np.array(json.dumps(meta))})


def _load_state(path: Optional[Path], job_id: str) -> Optional[Tuple[Dict[str, np.ndarray], dict]]:
    """(arrays, meta) of a state file this job wrote; None if there is none (or another job's)."""
    if path is None or not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as stored:
        meta = json.loads(str(stored[_STATE_META]))
        return ({k: stored[k] for k in stored.files if k != _STATE_META}, meta) if meta.get("job") == job_id else None


class _TrainTaskFilter(DXOFilter):
    """A DXOFilter acting on the train task only (NVFlare allows one filter chain per task, shared with
    the float16 pair on train and validate)."""

    def __init__(self, data_kinds, train_task: str = _TRAIN):
        super().__init__(supported_data_kinds=data_kinds, data_kinds_to_filter=data_kinds)
        self.train_task = train_task

    def _is_train(self, fl_ctx: FLContext) -> bool:
        return fl_ctx.get_prop(FLContextKey.TASK_NAME) == self.train_task


# -- site side -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReceivedModel:
    """The full model a site received this task (float tensors float32) and its SHA-256."""

    weights: Mapping[str, np.ndarray]
    sha256: str


class ReceiveGlobalModel(_TrainTaskFilter):
    """Site, task data: rebuild the full global model from a delta (or take a full one), keep it as the
    base of the next delta and record it in the task's FL context for ``SendUpdate``."""

    def __init__(self, train_task: str = _TRAIN):
        super().__init__([DataKind.WEIGHTS, DataKind.APP_DEFINED], train_task)
        self.model: Optional[ReceivedModel] = None

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> Optional[DXO]:
        if not self._is_train(fl_ctx):
            return None
        size = serialized_size(dxo)
        round_ = shareable.get_header(AppConstants.CURRENT_ROUND, "?")
        state = _state_file(fl_ctx, MODEL_FILE)
        if dxo.data_kind == DataKind.WEIGHTS:
            weights, how = _as_float32(dxo.data), "full model"
        else:
            layout = _unpack(dxo, "global model")
            if self.model is None and (stored := _load_state(state, fl_ctx.get_job_id())):  # a restarted client
                self.model = ReceivedModel(stored[0], fingerprint(stored[0]))
            if self.model is None or self.model.sha256 != layout["base_sha256"]:
                raise CodecError(
                    f"round {round_}: the global model came as a delta against a model this site does not hold "
                    f"(base {layout['base_sha256'][:12]}, held {self.model.sha256[:12] if self.model else 'none'}); "
                    "the server sends the full model next round")
            weights = dict(self.model.weights)
            weights.update(_apply(self.model.weights, decode(dxo.data, layout)))
            how = f"int8 delta ({layout['fraction'] or 'dense'})"
        self.model = ReceivedModel(weights, fingerprint(weights))
        _save_state(state, weights, job=fl_ctx.get_job_id(), round=round_)
        fl_ctx.set_prop(RECEIVED_MODEL, self.model, private=True, sticky=False)
        self.log_info(fl_ctx, f"round {round_}: received the global model as {how}: {size} bytes")
        return DXO(DataKind.WEIGHTS, {k: v.copy() for k, v in weights.items()}, _without_codec(dxo.meta))


class SendUpdate(_TrainTaskFilter):
    """Site, task result: send the trained model's update as int8 (error feedback), and/or only the
    tensors partial upload lets leave the site.

    Args:
        compression: "int8" or "none" (then only partial upload applies).
        scale: "channel" (one scale per output channel) or "tensor".
        fraction: top-k: share of each tensor's entries sent (0 = all).
        upload_blocks: partial upload: only the first ``upload_blocks`` encoder blocks' tensors are sent
            (None = all transmitted tensors).
    """

    def __init__(self, compression: str = "int8", scale: str = "channel", fraction: float = 0.0,
                 upload_blocks: Optional[int] = None, train_task: str = _TRAIN):
        super().__init__([DataKind.WEIGHTS], train_task)
        self.codec = _codec(compression, scale, fraction)
        self.compression, self.scale, self.fraction, self.upload_blocks = compression, scale, fraction, upload_blocks
        upload_names((), upload_blocks)  # ValueError for a negative block count, at job-writing time
        self.residual: Dict[str, np.ndarray] = {}

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> Optional[DXO]:
        if not self._is_train(fl_ctx):
            return None
        names = upload_names(dxo.data, self.upload_blocks)
        if self.codec is None:
            out, how = DXO(DataKind.WEIGHTS, {n: dxo.data[n] for n in names}, dict(dxo.meta)), "weights"
        else:
            received = fl_ctx.get_prop(RECEIVED_MODEL)
            if not isinstance(received, ReceivedModel):
                raise CodecError("no received model recorded for this task: the job's ReceiveGlobalModel filter "
                                 "must run on the site's task data")
            missing = [n for n in names if n not in received.weights]
            if missing:
                raise CodecError(f"the received model lacks tensors this site sends: {missing[:5]}")
            update = {n: np.asarray(dxo.data[n]) - received.weights[n] for n in names}
            state, round_ = _state_file(fl_ctx, RESIDUAL_FILE), shareable.get_header(AppConstants.CURRENT_ROUND)
            stored = None if self.residual else _load_state(state, fl_ctx.get_job_id())
            if stored and isinstance(round_, int) and stored[1].get("round", round_) < round_:  # a restarted client
                self.residual = stored[0]
            data, layout, self.residual = compress_with_feedback(update, self.residual, self.codec)
            _save_state(state, self.residual, job=fl_ctx.get_job_id(), round=round_)
            out, how = _payload(data, layout, received.sha256, dxo.meta), self.codec.describe()
        size = serialized_size(out)
        out.set_meta_prop(BYTES_SENT, size)  # measured with the previous figure in place: same encoded length
        self.log_info(fl_ctx, f"round {shareable.get_header(AppConstants.CURRENT_ROUND, '?')}: sending "
                              f"{len(names)} of {len(dxo.data)} tensors as {how}: {size} bytes")
        return out


# -- server side -------------------------------------------------------------------------------------
class ReceiveUpdate(_TrainTaskFilter):
    """Server, task result: global model + decoded update = full WEIGHTS (of the tensors the site sent)
    for the aggregator. WEIGHTS results (no int8) pass unchanged. A failed train result makes
    ``SendGlobalModel`` send that site the full model next round (it may not hold the current one)."""

    def __init__(self, train_task: str = _TRAIN):
        super().__init__([DataKind.APP_DEFINED], train_task)

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if self._is_train(fl_ctx) and shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            downlink = fl_ctx.get_prop(DOWNLINK)
            if isinstance(downlink, Downlink):
                downlink.forget(_site(fl_ctx))
        return super().process(shareable, fl_ctx)

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> Optional[DXO]:
        if not self._is_train(fl_ctx):
            return None
        site = _site(fl_ctx)
        layout = _unpack(dxo, f"result of {site}")
        model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
        if model is None:
            raise RuntimeError("ReceiveUpdate needs the global model in the FL context (AppConstants.GLOBAL_MODEL)")
        base = model[ModelLearnableKey.WEIGHTS]
        delta = decode(dxo.data, layout)
        unknown = sorted(set(delta) - set(base))
        if unknown:
            raise CodecError(f"result of {site} updates tensors the global model does not have: {unknown[:5]}")
        return DXO(DataKind.WEIGHTS, _apply(base, delta), _without_codec(dxo.meta))


@dataclass
class Downlink:
    """What the sites hold, as ``SendGlobalModel`` tracks it: the model of round ``round`` (float tensors
    float32) and its SHA-256, the round each site last received, and this round's delta from the model of
    ``base_round`` (None: no delta this round)."""

    round: Optional[int] = None
    model: Dict[str, np.ndarray] = field(default_factory=dict)
    sha256: str = ""
    base_round: Optional[int] = None
    delta: Optional[DXO] = None
    full: Dict[str, np.ndarray] = field(default_factory=dict)
    holders: Dict[str, Optional[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def forget(self, site: str) -> None:
        """``site`` may not hold the current model (its result failed): it gets the full model next."""
        with self.lock:
            self.holders.pop(site, None)


class SendGlobalModel(_TrainTaskFilter):
    """Server, task data: send the global model as an int8 delta against the model the sites hold.

    The first round, and any site that did not receive the previous round's model, gets the full model
    (the sites' copy, so that all hold the same); tensors whose delta is zero (e.g. those partial upload
    holds back) are left out of the delta.

    Args:
        compression: "int8" or "none" (always the full model as it comes, which the server still records).
        scale, fraction: as for ``SendUpdate`` (top-k on the download too; what is not sent stays in the
            difference between the server's model and the sites' copy, so it goes in a later delta).
    """

    def __init__(self, compression: str = "int8", scale: str = "channel", fraction: float = 0.0,
                 train_task: str = _TRAIN):
        super().__init__([DataKind.WEIGHTS], train_task)
        self.codec = _codec(compression, scale, fraction)
        self.compression, self.scale, self.fraction = compression, scale, fraction
        self.downlink = Downlink()

    def _advance(self, dxo: DXO, round_: Optional[int]) -> None:
        """Move the sites' copy to ``round_`` (once a round): the delta from the previous copy, or none."""
        d = self.downlink
        if d.model and set(dxo.data) != set(d.model):
            raise CodecError(f"round {round_}: the global model's tensors changed: {sorted(set(dxo.data) ^ set(d.model))[:5]}")
        if self.codec is None or not d.model:
            # the model as it comes (float16 after ToHalfPrecision: then float16 on the wire, exactly)
            d.full, d.model, d.delta = dict(dxo.data), _as_float32(dxo.data), None
        else:
            delta = {n: np.asarray(v, np.float32 if d.model[n].dtype == np.float32 else None) - d.model[n]
                     for n, v in dxo.data.items()}
            data, layout = self.codec.encode(delta, skip_zero=True)
            # nothing changed (e.g. every result of the round was rejected): an empty DXO would skip the
            # sites' filters, so everyone gets the (unchanged) copy whole
            d.delta = _payload(data, layout, d.sha256, {}) if data else None
            d.model = {**d.model, **_apply(d.model, decode(data, layout))}
            d.full = d.model  # float32: the copy is no longer float16-exact
        d.base_round, d.round, d.sha256 = d.round, round_, fingerprint(d.model)

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> Optional[DXO]:
        if not self._is_train(fl_ctx):
            return None
        fl_ctx.set_prop(DOWNLINK, self.downlink, private=True, sticky=True)
        round_, site, d = shareable.get_header(AppConstants.CURRENT_ROUND), _site(fl_ctx), self.downlink
        with d.lock:
            if round_ != d.round or not d.model:
                self._advance(dxo, round_)
            if d.delta is not None and site in d.holders and d.holders[site] == d.base_round:
                out = DXO(DataKind.APP_DEFINED, d.delta.data, {**dxo.meta, CODEC: d.delta.meta[CODEC]})
                how = f"int8 delta on round {d.base_round}'s model"
            else:
                out, how = DXO(DataKind.WEIGHTS, dict(d.full), dict(dxo.meta)), "full model"
            d.holders[site] = round_
        self.log_info(fl_ctx, f"round {round_}: global model to {site} as {how}")
        return out

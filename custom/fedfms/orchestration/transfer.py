"""How a job's models travel: the transfer options (``TransferOptions``: half_precision, compression,
compression_scale, topk_fraction, compress_download, partial_upload_blocks; ``JobSettings`` takes its
defaults from there), their checks, the filter chains they give each side, their command-line flags
(``tools/make_jobs.py``, ``tools/demo.py``) and the bytes they put on the wire (``transfer_sizes``).

NVFlare allows one filter chain per task on each side, so the float16 pair
(``fedfms.runtime.precision``) and the compression filters (``fedfms.runtime.compression``) share one
chain for the train and validate tasks, in this order (the compression filters nearest the wire, except
that a site's update is compressed before ToHalfPrecision could round it):

=======================  ============================================================
server, task data        ToHalfPrecision, SendGlobalModel
site, task data          ReceiveGlobalModel, ToFullPrecision, DPGlobalModelTap
site, task result        GaussianUpdateDP, SendUpdate, ToHalfPrecision
server, task result      ReceiveUpdate, ToFullPrecision
=======================  ============================================================

The differential-privacy pair (``fedfms.runtime.dp``, ``dp_clip_norm`` > 0) sits at the site, on float32
models: the tap remembers the decoded global model, the noise goes on the update before it is compressed.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Dict, List, Mapping, Optional, Protocol, Tuple

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.job_config.defs import FilterType

from fedfms.networks import encoder_config
from fedfms.registry import Profile, get_method
from fedfms.runtime.codec import SCALE_MODES
from fedfms.runtime.dp import DPGlobalModelTap, GaussianUpdateDP
from fedfms.runtime.compression import COMPRESSIONS, ReceiveGlobalModel, ReceiveUpdate, SendGlobalModel, SendUpdate
from fedfms.runtime.precision import ToFullPrecision, ToHalfPrecision
from fedfms.runtime.selection import serialized_size


@dataclass(frozen=True)
class TransferOptions:
    """The transfer options and their defaults (the paper's: float32 both ways); see ``JobSettings``."""

    half_precision: bool = False
    compression: str = "none"
    compression_scale: str = "channel"
    topk_fraction: float = 0.0
    compress_download: bool = True
    partial_upload_blocks: Optional[int] = None


#: the defaults ``JobSettings`` and the flags take
TRANSFER_DEFAULTS = TransferOptions()
#: the transfer option names, in the order of their flags
FIELDS = tuple(f.name for f in fields(TransferOptions))


class TransferSettings(Protocol):
    """What the checks and filter chains read of a job's settings (``JobSettings`` has all of it)."""

    method: str
    profile: Profile
    half_precision: bool
    compression: str
    compression_scale: str
    topk_fraction: float
    compress_download: bool
    partial_upload_blocks: Optional[int]
    dp_clip_norm: float
    dp_noise_multiplier: float
    dp_delta: float


#: the transfer options the efficiency benchmark and README compare (JobSettings keyword arguments)
EXAMPLES: Dict[str, Dict[str, object]] = {
    "float32 (paper)": {},
    "float16": {"half_precision": True},
    "int8": {"compression": "int8"},
    "int8, top-k 0.2": {"compression": "int8", "topk_fraction": 0.2},
    "int8, partial upload K=1": {"compression": "int8", "partial_upload_blocks": 1},
    "float32, partial upload K=4": {"partial_upload_blocks": 4},
}


def check_transfer(s: TransferSettings) -> None:
    """Raise ValueError naming the option when the transfer options of ``s`` do not fit together."""
    if s.compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {s.compression!r}; expected one of {COMPRESSIONS}")
    if s.compression_scale not in SCALE_MODES:
        raise ValueError(f"unknown compression_scale {s.compression_scale!r}; expected one of {SCALE_MODES}")
    if not 0.0 <= s.topk_fraction < 1.0:
        raise ValueError(f"topk_fraction must be in [0, 1) (0 = off), got {s.topk_fraction}")
    if s.topk_fraction and s.compression != "int8":
        raise ValueError("topk_fraction needs compression='int8' (the kept values travel as int8)")
    if s.partial_upload_blocks is not None:
        if not get_method(s.method).uses_sam:
            raise ValueError(f"partial_upload_blocks applies to SAM encoder blocks; {s.method} has none")
        depth = encoder_config(s.profile.model_type).depth
        if not 0 <= s.partial_upload_blocks < depth:
            raise ValueError(f"partial_upload_blocks must be in [0, {depth}) for {s.profile.model_type} "
                             f"({depth} blocks; {depth} would send everything), got {s.partial_upload_blocks}")


def transfer_filters(s: TransferSettings) -> List[Tuple[str, str, List[Filter]]]:
    """(side "server" | "clients", FilterType, filters in order) of every filter chain ``s`` needs."""
    int8 = s.compression == "int8"
    codec = dict(compression=s.compression, scale=s.compression_scale, fraction=s.topk_fraction)
    chains: Dict[Tuple[str, str], List[Filter]] = {}

    def add(side: str, kind: str, *filters: Filter) -> None:
        chains.setdefault((side, kind), []).extend(filters)

    if s.half_precision:
        add("server", FilterType.TASK_DATA, ToHalfPrecision())
    if int8:  # sites need the model they received as the base of their update, compressed download or not
        add("server", FilterType.TASK_DATA, SendGlobalModel(**(codec if s.compress_download else {"compression": "none"})))
        add("clients", FilterType.TASK_DATA, ReceiveGlobalModel())
    if s.half_precision:
        add("clients", FilterType.TASK_DATA, ToFullPrecision())
    if s.dp_clip_norm:  # the tap remembers the float32 model received; the noise goes on the float32 update
        add("clients", FilterType.TASK_DATA, DPGlobalModelTap())
        add("clients", FilterType.TASK_RESULT, GaussianUpdateDP(clip_norm=s.dp_clip_norm, noise_multiplier=s.dp_noise_multiplier,
                                                                delta=s.dp_delta))
    if int8 or s.partial_upload_blocks is not None:
        add("clients", FilterType.TASK_RESULT, SendUpdate(**codec, upload_blocks=s.partial_upload_blocks))
    if int8:
        add("server", FilterType.TASK_RESULT, ReceiveUpdate())
    if s.half_precision:
        add("clients", FilterType.TASK_RESULT, ToHalfPrecision())
        add("server", FilterType.TASK_RESULT, ToFullPrecision())
    return [(side, kind, filters) for (side, kind), filters in chains.items()]


def add_transfer_arguments(parser: argparse.ArgumentParser) -> None:
    """The transfer options as flags; defaults from ``TRANSFER_DEFAULTS``."""
    group = parser.add_argument_group("transfer (what travels on the wire; README 'Efficiency')")
    group.add_argument("--half-precision", action="store_true", help="send models as float16 both ways (half the bytes)")
    group.add_argument("--compression", choices=COMPRESSIONS, default=TRANSFER_DEFAULTS.compression,
                       help="int8: send model deltas as int8 with error feedback, both ways (default: %(default)s)")
    group.add_argument("--compression-scale", choices=SCALE_MODES, default=TRANSFER_DEFAULTS.compression_scale,
                       help="int8 scale per output channel or per tensor (default: %(default)s)")
    group.add_argument("--topk-fraction", type=float, default=TRANSFER_DEFAULTS.topk_fraction,
                       help="with int8: send only this fraction of each tensor's entries, largest first, the "
                            "rest carried by error feedback (0 = all; default: %(default)s)")
    group.add_argument("--no-compress-download", dest="compress_download", action="store_false",
                       help="with int8: compress the sites' updates only; the global model travels whole")
    group.add_argument("--partial-upload-blocks", type=int, default=TRANSFER_DEFAULTS.partial_upload_blocks,
                       metavar="K", help="FedSCA-style partial upload (our interpretation): sites send only the "
                                         "first K encoder blocks' tensors plus decoder and head (default: all)")


def transfer_settings(args: argparse.Namespace) -> Dict[str, object]:
    """JobSettings keyword arguments of the flags ``add_transfer_arguments`` added, those that differ from
    the defaults (so a summary names only what was chosen)."""
    return {name: getattr(args, name) for name in FIELDS if getattr(args, name) != getattr(TRANSFER_DEFAULTS, name)}


def _context(identity: str, peer: str = "") -> FLContext:
    fl_ctx = FLContext()
    fl_ctx.set_prop(ReservedKey.IDENTITY_NAME, identity, private=False, sticky=False)
    fl_ctx.set_prop(FLContextKey.TASK_NAME, AppConstants.TASK_TRAIN, private=True, sticky=False)
    if peer:
        fl_ctx.set_peer_context(_context(peer))
    return fl_ctx


def transfer_sizes(s: TransferSettings, weights: Mapping[str, np.ndarray], update_std: float = 1e-3,
                   seed: int = 0) -> Dict[str, int]:
    """Serialized bytes one site sends and receives per round under the transfer options of ``s``, for a
    model whose transmitted tensors are ``weights`` (numpy, as the server sends them).

    Measured, not computed: two rounds of the job's own filter chains (``transfer_filters``) run in this
    process, server and one site, with a synthetic local update (Gaussian, ``update_std``; message sizes
    do not depend on the values, except that all-zero deltas are left out of a download). Returns
    {"down_first": round 0's global model, "up": the site's result, "down": round 1's global model}.
    """
    chains = {(side, kind): filters for side, kind, filters in transfer_filters(s)}
    server, site = _context("server", peer="site-1"), _context("site-1", peer="server")

    def run(side: str, kind: str, dxo: DXO, fl_ctx: FLContext, round_: int) -> DXO:
        shareable = dxo.to_shareable()
        shareable.set_header(AppConstants.CURRENT_ROUND, round_)
        for f in chains.get((side, kind), []):
            shareable = f.process(shareable, fl_ctx)
        return from_shareable(shareable)

    rng = np.random.default_rng(seed)
    glob = {n: np.asarray(v) for n, v in weights.items()}
    sizes = {}
    for round_, key in ((0, "down_first"), (1, "down")):
        server.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable(glob, {}), private=True, sticky=True)
        on_wire = run("server", FilterType.TASK_DATA, DXO(DataKind.WEIGHTS, dict(glob)), server, round_)
        sizes[key] = serialized_size(on_wire)
        if round_:
            break
        received = run("clients", FilterType.TASK_DATA, on_wire, site, round_).data
        trained = {n: (v + rng.normal(0, update_std, v.shape)).astype(v.dtype) if np.issubdtype(v.dtype, np.floating)
                   else v for n, v in received.items()}
        result = DXO(DataKind.WEIGHTS, trained, {MetaKey.NUM_STEPS_CURRENT_ROUND: 100})
        on_wire = run("clients", FilterType.TASK_RESULT, result, site, round_)
        sizes["up"] = serialized_size(on_wire)
        aggregated = run("server", FilterType.TASK_RESULT, on_wire, server, round_).data
        glob = {**glob, **{n: np.asarray(v, glob[n].dtype) for n, v in aggregated.items()}}  # one site: its model
    return sizes

"""Differential privacy for a site's model updates: per-round L2 clipping plus Gaussian noise, as NVFlare
filters on the site, with Opacus's RDP accountant reporting the (epsilon, delta) spent.

Each round a site's result w_k (the transmitted tensors after local training) leaves as

    w_global + clip(w_k - w_global, C) + N(0, (sigma C)^2 I)

where clip scales the whole update (every floating-point tensor together) down to L2 norm <= C
(``clip_norm``) and sigma is the ``noise_multiplier``. ``DPGlobalModelTap`` (task-data filter) remembers the
global model the site received for the train task; ``GaussianUpdateDP`` (task-result filter) clips and
noises the result against it and adds ``dp_epsilon`` / ``dp_delta`` (``fedfms.core.wire``) to the result's
meta, which the server's round report records per site.

The guarantee (what the accountant computes): the sequence of updates one site releases is
(epsilon, delta)-differentially private with respect to adding or removing that site's entire
contribution (site-level DP, add/remove adjacency, sensitivity C), against anyone who sees the updates
(the server, and everyone who later sees a global model). It covers every record of the site, because a
record can change the update by no more than the whole site can. Under replace-one adjacency
(one record swapped for another) the sensitivity is 2C, i.e. the guarantee of noise multiplier sigma / 2.
Each round is one Gaussian mechanism on the full data (sampling rate 1); T rounds compose in RDP
(Opacus ``RDPAccountant``, used for accounting only). T counts every round up to the latest one the site
took part in, since the first round it saw *in this job run* plus every earlier round: a conservative
count that stays valid when a job is resumed at a later round or a site misses rounds.

What is not protected: the sample count n_k a site reports (plain metadata the server weighs by), the
validation metrics it reports, and the fact that it took part. FedAvg weighting by n_k is
post-processing (it does not change a site's guarantee) but it scales each site's noise in the global
model by n_k / sum(n): large sites' noise dominates. The noise norm is sigma C sqrt(d) for d transmitted
values, so utility depends on d: FedMSA (adapters + decoder) has far fewer values than FedSAM.
The noise comes from numpy's PCG64 generator seeded from OS entropy (not a cryptographically secure
generator, as in Opacus without ``secure_mode``).
"""

from __future__ import annotations

import threading
from typing import Dict, Optional, Tuple

import numpy as np
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants
from opacus.accountants import RDPAccountant

from fedfms.core.wire import DP_DELTA, DP_EPSILON

#: site -> (round, global model) it received last for the train task; written by DPGlobalModelTap, read by
#: GaussianUpdateDP (two filter objects: NVFlare builds every filter of a chain separately). Keyed by site
#: because the simulator runs several sites in one process.
_RECEIVED: Dict[str, Tuple[int, Dict[str, np.ndarray]]] = {}
_LOCK = threading.Lock()


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Epsilon spent after ``rounds`` Gaussian mechanisms with ``noise_multiplier`` at sampling rate 1, for
    ``delta``, by Opacus's RDP accountant (inf for sigma = 0, 0 for no round)."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=1.0)
    return float(accountant.get_epsilon(delta=delta))


def privatize(weights: Dict[str, np.ndarray], reference: Dict[str, np.ndarray], clip_norm: float,
              noise_multiplier: float, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """``reference + clip(weights - reference, clip_norm) + N(0, (noise_multiplier clip_norm)^2)`` per value,
    dtypes kept. Every tensor must be floating point and named in ``reference`` with the same shape."""
    for name, value in weights.items():
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"differential privacy needs floating-point tensors; {name} is {value.dtype}")
        if name not in reference or np.shape(reference[name]) != value.shape:
            raise ValueError(f"tensor {name} does not match the received global model")
    update = {n: np.asarray(v, np.float64) - np.asarray(reference[n], np.float64) for n, v in weights.items()}
    norm = float(np.sqrt(sum(float(np.sum(u * u)) for u in update.values())))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    sigma = noise_multiplier * clip_norm
    return {n: (np.asarray(reference[n], np.float64) + u * scale + rng.normal(0.0, sigma, u.shape))
            .astype(np.asarray(weights[n]).dtype) for n, u in update.items()}


class DPGlobalModelTap(DXOFilter):
    """Task-data filter on a site: remembers the global model of each train task (unchanged), for
    ``GaussianUpdateDP``. Put it after any filter that restores full precision."""

    def __init__(self, train_task_name: str = AppConstants.TASK_TRAIN):
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS], data_kinds_to_filter=[DataKind.WEIGHTS])
        self.train_task_name = train_task_name

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> Optional[DXO]:
        if fl_ctx.get_prop(FLContextKey.TASK_NAME) == self.train_task_name:
            round_ = int(shareable.get_header(AppConstants.CURRENT_ROUND, 0))
            model = {name: np.array(value, copy=True) for name, value in dxo.data.items()}
            with _LOCK:
                _RECEIVED[fl_ctx.get_identity_name()] = (round_, model)
        return dxo


class GaussianUpdateDP(DXOFilter):
    """Task-result filter on a site: clips the update to L2 norm ``clip_norm`` and adds Gaussian noise of
    standard deviation ``noise_multiplier`` x ``clip_norm``; adds the (epsilon, ``delta``) spent so far.

    Args:
        clip_norm: C, the bound on the L2 norm of one round's update (all transmitted tensors together).
        noise_multiplier: sigma; the noise standard deviation per value is sigma x C.
        delta: the delta of the reported (epsilon, delta); choose it below 1 / (records of the site).
    """

    def __init__(self, clip_norm: float, noise_multiplier: float, delta: float = 1e-5,
                 train_task_name: str = AppConstants.TASK_TRAIN):
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS], data_kinds_to_filter=[DataKind.WEIGHTS])
        if clip_norm <= 0 or noise_multiplier < 0 or not 0 < delta < 1:
            raise ValueError(f"need clip_norm > 0, noise_multiplier >= 0, 0 < delta < 1; got {clip_norm}, "
                             f"{noise_multiplier}, {delta}")
        self.clip_norm, self.noise_multiplier, self.delta = float(clip_norm), float(noise_multiplier), float(delta)
        self.train_task_name = train_task_name
        self.rng = np.random.default_rng()  # OS entropy; never seeded from the job
        self.first_round: Optional[int] = None
        self.rounds_released = 0

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> Optional[DXO]:
        if fl_ctx.get_prop(FLContextKey.TASK_NAME) != self.train_task_name:
            return dxo
        site = fl_ctx.get_identity_name()
        with _LOCK:
            received = _RECEIVED.get(site)
        if received is None:  # nothing may leave unprotected
            raise RuntimeError(f"site {site}: no received global model to privatize the update against "
                               "(DPGlobalModelTap must be in the site's task-data filters)")
        round_, reference = received
        dxo.data = privatize(dxo.data, reference, self.clip_norm, self.noise_multiplier, self.rng)
        if self.first_round is None:
            self.first_round = round_
        self.rounds_released += 1
        spent = epsilon(self.noise_multiplier, self.first_round + self.rounds_released, self.delta)
        dxo.set_meta_prop(DP_EPSILON, spent)
        dxo.set_meta_prop(DP_DELTA, self.delta)
        self.log_info(fl_ctx, f"site {site} round {round_}: update clipped to L2 <= {self.clip_norm}, noise sigma "
                              f"{self.noise_multiplier}; privacy spent (epsilon {spent:.3g}, delta {self.delta:g})")
        return dxo

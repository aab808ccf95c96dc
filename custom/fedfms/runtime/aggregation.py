"""Server-side aggregation that survives bad updates, with FedAvg or similarity-guided (FedSCA) weights.

``GuardedAggregator`` is NVFlare's ``InTimeAccumulateWeightedAggregator`` with two hooks:

* ``accept`` rejects a site's result at once (logged with site and reason) when it holds a non-finite
  value, or tensor names / shapes other than the current global model's (in a job with partial upload:
  exactly the subset ``codec.upload_names`` selects; the aggregate then keeps the global values of the
  rest); valid results are held until the round's aggregation;
* ``aggregate`` then rejects updates whose L2 distance from the global model is an outlier
  (> ``outlier_factor`` x the median distance of the round's valid results, only with at least
  ``min_sites_for_outliers`` of them), sets each remaining site's aggregation weight (1 for FedAvg;
  the similarity weight for FedSCA) and hands the results to the parent's ``accept`` / ``aggregate``:
  the weighted mean itself (weights x NUM_STEPS_CURRENT_ROUND = n_k, normalised) is NVFlare's.

Holding the round's results costs memory (sites x transmitted model; FedSAM ViT-B: 373 MB per site);
the outlier test needs the median over the whole round, which an in-time accumulator cannot revise.

The pure functions (:func:`check_update`, :func:`update_distances`, :func:`outliers`,
:func:`fedsca_weights`) take ``{name: array}`` dicts and are what the aggregator calls.
"""

from __future__ import annotations

from typing import Collection, Dict, Mapping, Optional

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.aggregators.intime_accumulate_model_aggregator import InTimeAccumulateWeightedAggregator
from nvflare.app_common.app_constant import AppConstants

from .codec import upload_names

Weights = Mapping[str, np.ndarray]
#: aggregation name -> what sets each site's weight (besides n_k, which NVFlare multiplies in)
AGGREGATIONS = ("fedavg", "fedsca")
#: Defaults of the outlier test's factor k and of the FedSCA softmax temperature (jobs use these too).
OUTLIER_FACTOR, FEDSCA_TEMPERATURE = 5.0, 0.1
#: FL context property {site: reason} of the round's rejected results, set by aggregate() for the
#: ROUND_DONE handlers (fedfms.runtime.report.JobReport).
REJECTED_UPDATES = "fedfms_rejected_updates"


def check_update(weights: Weights, reference: Weights, names: Optional[Collection[str]] = None) -> Optional[str]:
    """Why ``weights`` cannot be aggregated with ``reference`` (the global model), or None if it can:
    tensor names differ from ``names`` (default: the global model's; partial upload: the subset sites
    send), a shape differs, or a value is NaN/inf. The reason names the tensors."""
    names = set(reference) if names is None else set(names)
    unexpected, missing = sorted(set(weights) - names), sorted(names - set(weights))
    if unexpected or missing:
        return f"tensor names differ from the global model's sent tensors (unexpected: {unexpected[:5]}, missing: {missing[:5]})"
    for name in sorted(names):
        value = np.asarray(weights[name])
        if value.shape != np.shape(reference[name]):
            return f"tensor {name} has shape {value.shape}, the global model's is {np.shape(reference[name])}"
        if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
            return f"tensor {name} holds {int((~np.isfinite(value)).sum())} non-finite values"
    return None


def _flat_update(weights: Weights, reference: Weights) -> np.ndarray:
    """The update w_k - w_global over all floating-point tensors, as one float64 vector."""
    parts = [np.asarray(weights[n], np.float64).ravel() - np.asarray(reference[n], np.float64).ravel()
             for n in sorted(set(reference) & set(weights)) if np.issubdtype(np.asarray(reference[n]).dtype, np.floating)]
    return np.concatenate(parts) if parts else np.zeros(0)


def update_distances(results: Mapping[str, Weights], reference: Weights) -> Dict[str, float]:
    """L2 norm of each site's update ``results[site] - reference``."""
    return {site: float(np.linalg.norm(_flat_update(w, reference))) for site, w in results.items()}


def outliers(distances: Mapping[str, float], factor: float, min_sites: int = 3) -> Dict[str, str]:
    """Sites whose distance exceeds ``factor`` x the median distance, with the reason; none when
    fewer than ``min_sites`` sites (a median of two cannot tell which one is bad) or factor <= 0."""
    if factor <= 0 or len(distances) < min_sites:
        return {}
    median = float(np.median(list(distances.values())))
    return {site: f"update L2 distance {d:.4g} > {factor} x round median {median:.4g}"
            for site, d in distances.items() if d > factor * median}


def fedsca_weights(results: Mapping[str, Weights], reference: Weights, temperature: float) -> Dict[str, float]:
    """Similarity-guided weights (our interpretation of FedSCA): s_k = mean cosine similarity of site
    k's update to the other sites' updates; weight_k = softmax(s / temperature)_k. A site whose update
    agrees with the others counts more; NVFlare multiplies in n_k and normalises. One site: weight 1."""
    sites = sorted(results)
    if len(sites) == 1:
        return {sites[0]: 1.0}
    updates = np.stack([_flat_update(results[s], reference) for s in sites])
    unit = updates / np.maximum(np.linalg.norm(updates, axis=1, keepdims=True), 1e-12)
    cosine = unit @ unit.T
    similarity = (cosine.sum(axis=1) - np.diag(cosine)) / (len(sites) - 1)
    logits = similarity / temperature
    soft = np.exp(logits - logits.max())
    return dict(zip(sites, (soft / soft.sum()).tolist()))


class GuardedAggregator(InTimeAccumulateWeightedAggregator):
    """InTimeAccumulateWeightedAggregator that rejects bad updates and can weight by similarity.

    Args:
        outlier_factor: reject an update farther from the global model than this x the round's median
            distance (0 = no outlier test).
        min_sites_for_outliers: the outlier test needs at least this many valid results in the round.
        aggregation: "fedavg" (weights n_k) or "fedsca" (weights n_k x softmax(similarity / temperature)).
        temperature: FedSCA softmax temperature (cosine similarities lie in [-1, 1]).
        upload_blocks: partial upload (``codec.upload_names``): results must hold exactly the tensors of the
            first ``upload_blocks`` encoder blocks, decoder and head; the aggregate keeps the global model's
            values of the others. None: results hold every tensor of the global model.
        args, kwargs: InTimeAccumulateWeightedAggregator's (expected_data_kind must be WEIGHTS); both
            declared so that NVFlare's Job API writes them into the job config.

    The global model is read from the FL context (AppConstants.GLOBAL_MODEL, set by ScatterAndGather).
    """

    def __init__(self, *args, outlier_factor: float = OUTLIER_FACTOR, min_sites_for_outliers: int = 3,
                 aggregation: str = AGGREGATIONS[0], temperature: float = FEDSCA_TEMPERATURE,
                 upload_blocks: Optional[int] = None, **kwargs):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {AGGREGATIONS}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        kwargs.setdefault("expected_data_kind", DataKind.WEIGHTS)
        if kwargs["expected_data_kind"] != DataKind.WEIGHTS:
            raise ValueError("GuardedAggregator aggregates WEIGHTS (full transmitted models) only")
        super().__init__(*args, **kwargs)
        self.outlier_factor = float(outlier_factor)
        self.min_sites_for_outliers = int(min_sites_for_outliers)
        self.aggregation = aggregation
        self.temperature = float(temperature)
        self.upload_blocks = upload_blocks
        upload_names((), upload_blocks)  # ValueError for a negative block count
        self._held: Dict[str, Shareable] = {}
        self._rejected: Dict[str, str] = {}

    @staticmethod
    def _global_weights(fl_ctx: FLContext) -> Weights:
        model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
        if model is None:
            raise RuntimeError("GuardedAggregator needs the global model in the FL context (AppConstants.GLOBAL_MODEL)")
        return model[ModelLearnableKey.WEIGHTS]

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        """Hold a valid result for this round's aggregation; reject (and log) anything else."""
        site = shareable.get_peer_prop(key=ReservedKey.IDENTITY_NAME, default="?")
        rc = shareable.get_return_code()
        if rc and rc != ReturnCode.OK:
            self._reject(site, f"return code {rc}", fl_ctx)
            return False
        try:
            dxo = from_shareable(shareable)
        except Exception as error:  # a malformed result must not stop the round
            self._reject(site, f"not a DXO ({error})", fl_ctx)
            return False
        contribution_round = shareable.get_cookie(AppConstants.CONTRIBUTION_ROUND)
        current_round = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        if contribution_round != current_round:  # a late result must not take the place of this round's
            self.log_warning(fl_ctx, f"result of {site} for round {contribution_round} discarded in round {current_round}")
            return False
        if site in self._held:  # its first result stays in the round
            self.log_warning(fl_ctx, f"second result of {site} this round ignored")
            return False
        if dxo.data_kind != DataKind.WEIGHTS:
            reason = f"data kind {dxo.data_kind}, expected {DataKind.WEIGHTS}"
        else:
            reference = self._global_weights(fl_ctx)
            reason = check_update(dxo.data or {}, reference, upload_names(reference, self.upload_blocks))
        if reason:
            self._reject(site, reason, fl_ctx)
            return False
        self._held[site] = shareable
        return True

    def _reject(self, site: str, reason: str, fl_ctx: FLContext) -> None:
        self.log_warning(fl_ctx, f"round {fl_ctx.get_prop(AppConstants.CURRENT_ROUND)}: result of {site} rejected: {reason}")
        self._rejected[site] = reason

    def reset(self, fl_ctx: FLContext) -> None:
        """Forget the round's held results and rejections (ScatterAndGather calls this after each round)."""
        self._held, self._rejected = {}, {}
        super().reset(fl_ctx)

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        """Drop outliers, set the sites' weights and aggregate the rest with NVFlare's weighted mean."""
        held, self._held = self._held, {}
        round_ = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        reference = self._global_weights(fl_ctx)
        results = {site: from_shareable(s).data for site, s in held.items()}
        distances = update_distances(results, reference)
        for site, reason in outliers(distances, self.outlier_factor, self.min_sites_for_outliers).items():
            self._reject(site, reason, fl_ctx)
            del results[site]
        fl_ctx.set_prop(REJECTED_UPDATES, dict(self._rejected), private=True, sticky=False)
        self._rejected = {}
        if self.aggregation == "fedsca" and results:
            weights = fedsca_weights(results, reference, self.temperature)
        else:
            weights = {site: 1.0 for site in results}
        self.log_info(fl_ctx, f"round {round_}: aggregating {sorted(results)} with {self.aggregation} "
                              f"weights {({s: round(w, 4) for s, w in weights.items()})} (x n_k)")
        for aggregator in self.dxo_aggregators.values():
            aggregator.aggregation_weights = weights
        for site in results:
            super().accept(held[site], fl_ctx)
        aggregate = super().aggregate(fl_ctx)
        if self.upload_blocks is None:
            return aggregate
        # FullModelShareableGenerator replaces the global weights by the aggregate: add the unsent tensors
        dxo = from_shareable(aggregate)
        kept = {n: v for n, v in reference.items() if n not in dxo.data}
        return DXO(DataKind.WEIGHTS, {**kept, **dxo.data}, dxo.meta).update_shareable(aggregate)

"""Server-side aggregation that survives bad updates, with FedAvg or similarity-guided (FedSCA) weights.

``GuardedAggregator`` is NVFlare's ``InTimeAccumulateWeightedAggregator`` with two hooks:

* ``accept`` rejects a site's result at once (logged with site and reason) when it holds a non-finite
  value, tensor names / shapes / dtypes other than the current global model's (in a job with partial
  upload: exactly the subset ``codec.upload_names`` selects; the aggregate then keeps the global values
  of the rest), or a sample count n_k that is not a finite positive integer, exceeds ``max_samples`` or
  differs from the value the site reported first in this job (a site's data do not change mid-job);
  valid results are held until the round's aggregation;
* ``aggregate`` then rejects updates whose L2 distance from the global model is an outlier
  (> ``outlier_factor`` x the median distance of the round's valid results, only with at least
  ``min_sites_for_outliers`` of them), optionally clips each update's L2 norm to ``clip_factor`` x
  the median norm of the accepted updates of the last ``clip_history`` rounds (:func:`clip_bound`),
  sets each remaining site's aggregation weight (1 for FedAvg; the similarity weight for FedSCA) and
  averages: NVFlare's weighted mean (weights x NUM_STEPS_CURRENT_ROUND = n_k, normalised; the sites
  accumulated in name order, so a seeded run gives the same model whatever order the sites finished
  in) for ``robust_mean="mean"``, or, with three or more results, a coordinate-wise n_k-weighted
  trimmed mean or median (:func:`trimmed_mean`).

Holding the round's results costs memory (sites x transmitted model; FedSAM ViT-B: 373 MB per site);
the outlier test needs the median over the whole round, which an in-time accumulator cannot revise.

The pure functions (:func:`check_update`, :func:`check_sample_count`, :func:`update_distances`,
:func:`outliers`, :func:`clip_bound`, :func:`clip_update`, :func:`trimmed_mean`, :func:`fedsca_weights`)
take ``{name: array}`` dicts and are what the aggregator calls.
"""

from __future__ import annotations

import math
from collections import deque
from numbers import Real
from typing import Collection, Deque, Dict, List, Mapping, Optional, Sequence

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.aggregators.intime_accumulate_model_aggregator import InTimeAccumulateWeightedAggregator
from nvflare.app_common.app_constant import AppConstants

from .codec import upload_names
from .finite import nonfinite

Weights = Mapping[str, np.ndarray]
#: aggregation name -> what sets each site's weight (besides n_k, which NVFlare multiplies in)
AGGREGATIONS = ("fedavg", "fedsca")
#: how the accepted (and possibly clipped) results are averaged: NVFlare's weighted mean, or per
#: coordinate an n_k-weighted mean without the ``trim`` lowest and highest values, or the weighted median
ROBUST_MEANS = ("mean", "trimmed_mean", "median")
#: Defaults of the outlier test's factor k and of the FedSCA softmax temperature (jobs use these too).
OUTLIER_FACTOR, FEDSCA_TEMPERATURE = 5.0, 0.1
#: Default of the update-norm clipping: factor x the median accepted norm of the last CLIP_HISTORY rounds.
CLIP_FACTOR, CLIP_HISTORY = 3.0, 5
#: FL context property {site: reason} of the round's rejected results, set by aggregate() for the
#: ROUND_DONE handlers (fedfms.runtime.report.JobReport) and the best-model selector.
REJECTED_UPDATES = "fedfms_rejected_updates"
#: FL context property with what aggregate() did: {"rule", "update_norms", "clip_bound", "clipped"}.
AGGREGATION_NOTES = "fedfms_aggregation_notes"


def check_update(weights: Weights, reference: Weights, names: Optional[Collection[str]] = None) -> Optional[str]:
    """Why ``weights`` cannot be aggregated with ``reference`` (the global model), or None if it can:
    tensor names differ from ``names`` (default: the global model's; partial upload: the subset sites
    send), a shape or dtype differs, or a value is NaN/inf. The reason names the tensors."""
    names = set(reference) if names is None else set(names)
    unexpected, missing = sorted(set(weights) - names), sorted(names - set(weights))
    if unexpected or missing:
        return f"tensor names differ from the global model's sent tensors (unexpected: {unexpected[:5]}, missing: {missing[:5]})"
    for name in sorted(names):
        value, expected = np.asarray(weights[name]), np.asarray(reference[name])
        if value.shape != expected.shape:
            return f"tensor {name} has shape {value.shape}, the global model's is {expected.shape}"
        if value.dtype != expected.dtype:  # a float64 upload would turn the global model float64
            return f"tensor {name} has dtype {value.dtype}, the global model's is {expected.dtype}"
    return nonfinite(weights)


def check_sample_count(n: object, pinned: Optional[int] = None, maximum: int = 0) -> Optional[str]:
    """Why ``n`` (a result's NUM_STEPS_CURRENT_ROUND, the site's n_k) cannot weight an average, or None:
    it must be a finite positive integer, at most ``maximum`` (0 = no bound) and equal to ``pinned`` (the
    site's first accepted value in this job) when given."""
    if isinstance(n, bool) or not isinstance(n, Real):
        return f"sample count n_k {n!r} is not a number"
    if not math.isfinite(float(n)) or float(n) <= 0 or float(n) != int(n):
        return f"sample count n_k {n!r} is not a finite positive integer"
    if maximum and n > maximum:
        return f"sample count n_k {int(n)} exceeds the job's max_samples {maximum}"
    if pinned is not None and int(n) != pinned:
        return f"sample count n_k {int(n)} differs from the {pinned} this site reported first (a site's data do not change during a job)"
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


def clip_bound(history: Sequence[float], norms: Sequence[float], factor: float) -> Optional[float]:
    """The L2 bound of this round's updates: ``factor`` x the median of ``history`` (the accepted, clipped
    update norms of the last rounds); without history (the first round) ``factor`` x the lower median of
    this round's ``norms``, so that with two results the larger one is bounded by the smaller one. None
    when ``factor`` <= 0 or there is nothing to compare with."""
    if factor <= 0:
        return None
    if history:
        return factor * float(np.median(history))
    if not norms:
        return None
    return factor * float(np.sort(np.asarray(norms, np.float64))[(len(norms) - 1) // 2])


def clip_update(weights: Weights, reference: Weights, norm: float, bound: float) -> Dict[str, np.ndarray]:
    """``reference + (weights - reference) x bound / norm`` on the floating-point tensors (dtypes kept):
    the update scaled down to L2 norm ``bound``. Other tensors are returned unchanged."""
    scale = bound / norm
    out = {}
    for name, value in weights.items():
        ref = np.asarray(reference[name])
        if np.issubdtype(ref.dtype, np.floating):
            out[name] = (ref.astype(np.float64) + (np.asarray(value, np.float64) - ref) * scale).astype(ref.dtype)
        else:
            out[name] = np.asarray(value)
    return out


def trimmed_mean(results: Mapping[str, Weights], weights: Mapping[str, float], trim: int) -> Dict[str, np.ndarray]:
    """Coordinate-wise weighted trimmed mean: for every value, drop the ``trim`` lowest and ``trim`` highest
    of the sites' values, then average the rest weighted by ``weights`` (n_k x the site's aggregation
    weight). ``trim`` = (n - 1) // 2 gives the weighted median of the middle one or two values. Needs
    n > 2 trim sites. Integer tensors (counters) are averaged without trimming and rounded. Tensors are
    processed one at a time (memory: sites x the largest tensor)."""
    sites = sorted(results)
    n = len(sites)
    if trim < 0 or n <= 2 * trim:
        raise ValueError(f"a trimmed mean dropping {trim} values each side needs more than {2 * trim} results, got {n}")
    w = np.asarray([weights[s] for s in sites], np.float64)
    out = {}
    for name in results[sites[0]]:
        stack = np.stack([np.asarray(results[s][name]) for s in sites])
        dtype = stack.dtype
        values = stack.astype(np.float64)
        if not np.issubdtype(dtype, np.floating):
            mean = np.tensordot(w, values, axes=1) / w.sum()
            out[name] = np.rint(mean).astype(dtype)
            continue
        order = np.argsort(values, axis=0, kind="stable")[trim:n - trim]
        kept = np.take_along_axis(values, order, axis=0)
        kept_w = w[order]
        out[name] = ((kept * kept_w).sum(axis=0) / kept_w.sum(axis=0)).astype(dtype)
    return out


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
    """InTimeAccumulateWeightedAggregator that rejects bad updates, can bound the influence of one
    misbehaving site and can weight by similarity.

    Args:
        outlier_factor: reject an update farther from the global model than this x the round's median
            distance (0 = no outlier test).
        min_sites_for_outliers: the outlier test needs at least this many valid results in the round.
        aggregation: "fedavg" (weights n_k) or "fedsca" (weights n_k x softmax(similarity / temperature)).
        temperature: FedSCA softmax temperature (cosine similarities lie in [-1, 1]).
        max_samples: reject a result whose n_k exceeds this (0 = no bound).
        pin_samples: reject a result whose n_k differs from the site's first aggregated n_k of the job.
        clip_factor: clip each update's L2 norm to this x the median accepted norm of the last
            ``clip_history`` rounds (first round: x the round's lower median); 0 = no clipping.
        clip_history: rounds of accepted update norms the clipping bound looks back on.
        robust_mean: "mean" (NVFlare's n_k-weighted mean), "trimmed_mean" (per coordinate, drop the
            ``trim`` lowest and highest values, n_k-weighted mean of the rest) or "median"; the last two
            need at least 2 trim + 1 (median: 3) results and fall back to the mean otherwise.
        trim: values dropped on each side by the trimmed mean (the number of misbehaving sites defended).
        upload_blocks: partial upload (``codec.upload_names``): results must hold exactly the tensors of the
            first ``upload_blocks`` encoder blocks, decoder and head; the aggregate keeps the global model's
            values of the others. None: results hold every tensor of the global model.
        args, kwargs: InTimeAccumulateWeightedAggregator's (expected_data_kind must be WEIGHTS); both
            declared so that NVFlare's Job API writes them into the job config.

    The global model is read from the FL context (AppConstants.GLOBAL_MODEL, set by ScatterAndGather).
    """

    def __init__(self, *args, outlier_factor: float = OUTLIER_FACTOR, min_sites_for_outliers: int = 3,
                 aggregation: str = AGGREGATIONS[0], temperature: float = FEDSCA_TEMPERATURE,
                 max_samples: int = 0, pin_samples: bool = True, clip_factor: float = 0.0,
                 clip_history: int = CLIP_HISTORY, robust_mean: str = ROBUST_MEANS[0], trim: int = 1,
                 upload_blocks: Optional[int] = None, **kwargs):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {AGGREGATIONS}")
        if robust_mean not in ROBUST_MEANS:
            raise ValueError(f"unknown robust_mean {robust_mean!r}; expected one of {ROBUST_MEANS}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if max_samples < 0 or clip_factor < 0 or clip_history < 1 or trim < 1:
            raise ValueError(f"need max_samples >= 0, clip_factor >= 0, clip_history >= 1, trim >= 1; got "
                             f"{max_samples}, {clip_factor}, {clip_history}, {trim}")
        kwargs.setdefault("expected_data_kind", DataKind.WEIGHTS)
        if kwargs["expected_data_kind"] != DataKind.WEIGHTS:
            raise ValueError("GuardedAggregator aggregates WEIGHTS (full transmitted models) only")
        super().__init__(*args, **kwargs)
        self.outlier_factor = float(outlier_factor)
        self.min_sites_for_outliers = int(min_sites_for_outliers)
        self.aggregation = aggregation
        self.temperature = float(temperature)
        self.max_samples, self.pin_samples = int(max_samples), bool(pin_samples)
        self.clip_factor, self.clip_history = float(clip_factor), int(clip_history)
        self.robust_mean, self.trim = robust_mean, int(trim)
        self.upload_blocks = upload_blocks
        upload_names((), upload_blocks)  # ValueError for a negative block count
        self._held: Dict[str, Shareable] = {}
        self._rejected: Dict[str, str] = {}
        self._pinned: Dict[str, int] = {}
        self._norm_history: Deque[List[float]] = deque(maxlen=self.clip_history)

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
            reason = check_sample_count(dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND),
                                        self._pinned.get(site) if self.pin_samples else None, self.max_samples)
            reference = self._global_weights(fl_ctx)
            reason = reason or check_update(dxo.data or {}, reference, upload_names(reference, self.upload_blocks))
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
        """Drop outliers, clip, set the sites' weights and average the rest."""
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

        norms = {site: distances[site] for site in results}
        history = [n for past in self._norm_history for n in past]
        bound = clip_bound(history, list(norms.values()), self.clip_factor)
        clipped = {}
        for site in sorted(results):
            if bound is not None and norms[site] > bound > 0:
                results[site] = clip_update(results[site], reference, norms[site], bound)
                clipped[site] = round(norms[site] / bound, 4)
                dxo = from_shareable(held[site])
                dxo.data = results[site]
                dxo.update_shareable(held[site])
        if clipped:
            self.log_warning(fl_ctx, f"round {round_}: updates clipped to L2 norm {bound:.4g} (norm / bound: {clipped})")
        self._norm_history.append([min(n, bound) if bound else n for n in norms.values()])
        counts = {site: int(from_shareable(held[site]).get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND)) for site in results}
        for site, n in counts.items():
            self._pinned.setdefault(site, n)

        if self.aggregation == "fedsca" and results:
            weights = fedsca_weights(results, reference, self.temperature)
        else:
            weights = {site: 1.0 for site in results}
        trim = (len(results) - 1) // 2 if self.robust_mean == "median" else self.trim
        rule = self.robust_mean if self.robust_mean != "mean" and trim >= 1 and len(results) > 2 * trim else "mean"
        fl_ctx.set_prop(AGGREGATION_NOTES, {"rule": rule, "update_norms": {s: round(n, 6) for s, n in norms.items()},
                                            "clip_bound": bound, "clipped": clipped}, private=True, sticky=False)
        self.log_info(fl_ctx, f"round {round_}: aggregating {sorted(results)} with {self.aggregation} weights "
                              f"{({s: round(w, 4) for s, w in weights.items()})} (x n_k), {rule}; update norms "
                              f"{({s: round(n, 4) for s, n in norms.items()})}")
        if rule != "mean":
            n_k = {s: counts[s] * weights[s] for s in results}
            aggregate = DXO(DataKind.WEIGHTS, trimmed_mean(results, n_k, trim)).to_shareable()
        else:
            for aggregator in self.dxo_aggregators.values():
                aggregator.aggregation_weights = weights
            for site in sorted(results):  # a fixed order: float sums depend on it, arrival order on the load
                super().accept(held[site], fl_ctx)
            aggregate = super().aggregate(fl_ctx)
        if self.upload_blocks is None:
            return aggregate
        # FullModelShareableGenerator replaces the global weights by the aggregate: add the unsent tensors
        dxo = from_shareable(aggregate)
        kept = {n: v for n, v in reference.items() if n not in dxo.data}
        return DXO(DataKind.WEIGHTS, {**kept, **dxo.data}, dxo.meta).update_shareable(aggregate)

"""Faults and lies through the server's components exactly as a job configures them: sample counts n_k,
upload dtypes, update clipping and the trimmed mean / median, the best-model selector, the round report
with missing meta, and the site's refusal of a non-finite global model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.fuel.utils.class_utils import instantiate_class
from scipy import stats

from fedfms.core.wire import BYTES_SENT, TRAIN_LOSS, VAL_DICE
from fedfms.orchestration.jobs import JobSettings, job_configs
from fedfms.runtime.aggregation import (
    AGGREGATION_NOTES, REJECTED_UPDATES, GuardedAggregator, check_sample_count, check_update, clip_bound, trimmed_mean,
)
from fedfms.runtime.best_model import AcceptedModelSelector
from fedfms.runtime.executor import BundleExecutor
from fedfms.runtime.finite import NonFiniteModelError, nonfinite
from fedfms.runtime.report import JobReport

REPO = Path(__file__).resolve().parents[2]
ROUND = 2
GLOBAL = {"a": np.zeros((3, 4), np.float32), "b": np.ones(5, np.float32)}


def _server_component(component_id: str, **settings):
    """A server component of a generated job (prostate FedMSA with ``settings``), built like NVFlare builds it."""
    config = job_configs(JobSettings("fedmsa", "prostate", **settings), REPO / "bundles")["server"]
    spec = next(c for c in config["components"] if c["id"] == component_id)
    component = instantiate_class(spec["path"], spec["args"])
    return component


def _context(round_: int = ROUND) -> FLContext:
    fl_ctx = FLContext()
    fl_ctx.set_prop(AppConstants.CURRENT_ROUND, round_, private=True, sticky=False)
    fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable(GLOBAL, {}), private=True, sticky=False)
    return fl_ctx


def _aggregator(**settings) -> GuardedAggregator:
    aggregator = _server_component("aggregator", **settings)
    assert isinstance(aggregator, GuardedAggregator)
    aggregator.handle_event(EventType.START_RUN, FLContext())
    return aggregator


def _result(site: str, weights: dict, n, round_: int = ROUND, **meta):
    shareable = DXO(DataKind.WEIGHTS, weights, {MetaKey.NUM_STEPS_CURRENT_ROUND: n, **meta}).to_shareable()
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, round_)
    return shareable


def _update(seed: int, scale: float = 0.1) -> dict:
    rng = np.random.default_rng(seed)
    return {k: (v + scale * rng.normal(size=v.shape)).astype(np.float32) for k, v in GLOBAL.items()}


def _mean(results: dict) -> dict:
    total = sum(n for _, n in results.values())
    return {k: sum(w[k].astype(np.float64) * n for w, n in results.values()) / total for k in GLOBAL}


# -- item 1: sample counts ---------------------------------------------------------------------------
def test_sample_counts_must_be_finite_positive_integers_within_the_bound_and_pinned():
    assert check_sample_count(12) is None and check_sample_count(12.0) is None
    for bad in (float("nan"), float("inf"), -5, 0, 2.5, True, "12", None):
        assert "n_k" in check_sample_count(bad), bad
    assert "exceeds the job's max_samples 100" in check_sample_count(101, maximum=100)
    assert check_sample_count(100, maximum=100) is None
    assert "differs from the 12 this site reported first" in check_sample_count(13, pinned=12)


def test_lying_sample_counts_are_rejected_with_site_and_reason(caplog):
    good = {"A": (_update(0), 10), "B": (_update(1), 30), "C": (_update(2), 20)}
    reversed_update = {k: GLOBAL[k] - 3 * (v - GLOBAL[k]) for k, v in _update(3).items()}
    lies = {"NAN": float("nan"), "INF": float("inf"), "NEG": -60, "HUGE": 1_000_000}
    aggregator = _aggregator(max_samples=1000)
    fl_ctx = _context()
    with caplog.at_level(logging.INFO):
        for site, (weights, n) in good.items():
            assert aggregator.accept(_result(site, weights, n), fl_ctx)
        for site, n in lies.items():
            assert not aggregator.accept(_result(site, reversed_update, n), fl_ctx)
        result = from_shareable(aggregator.aggregate(fl_ctx)).data
    rejected = fl_ctx.get_prop(REJECTED_UPDATES)
    assert set(rejected) == set(lies) and "max_samples 1000" in rejected["HUGE"]
    assert all("n_k" in reason for reason in rejected.values())
    for name, expected in _mean(good).items():
        np.testing.assert_allclose(result[name], expected, rtol=1e-5, atol=1e-7)
    messages = [r.getMessage() for r in caplog.records]
    assert all(any(f"result of {site} rejected: sample count n_k" in m for m in messages) for site in lies)

    # the next round: n_k is pinned to each site's first value; a changed count is a lie
    fl_ctx = _context(ROUND + 1)
    aggregator.reset(fl_ctx)
    assert aggregator.accept(_result("A", _update(4), 10, ROUND + 1), fl_ctx)
    assert not aggregator.accept(_result("B", reversed_update, 999, ROUND + 1), fl_ctx)
    assert aggregator.accept(_result("C", _update(5), 20, ROUND + 1), fl_ctx)
    aggregator.aggregate(fl_ctx)
    assert "differs from the 30 this site reported first" in fl_ctx.get_prop(REJECTED_UPDATES)["B"]


# -- item 7: upload dtypes --------------------------------------------------------------------------
def test_uploads_must_match_the_global_model_dtypes():
    as64 = {k: v.astype(np.float64) for k, v in _update(0).items()}
    assert check_update(as64, GLOBAL) == "tensor a has dtype float64, the global model's is float32"
    aggregator = _aggregator()
    fl_ctx = _context()
    assert not aggregator.accept(_result("A", as64, 10), fl_ctx)
    assert aggregator.accept(_result("B", _update(1), 10), fl_ctx)
    result = from_shareable(aggregator.aggregate(fl_ctx)).data
    assert {v.dtype for v in result.values()} == {np.dtype(np.float32)}
    assert "dtype float64" in fl_ctx.get_prop(REJECTED_UPDATES)["A"]


# -- item 5: a misbehaving site is bounded, also with two results -------------------------------------
def test_two_sites_the_larger_update_is_clipped_to_factor_times_the_smaller():
    honest = _update(0, scale=0.1)
    attack = {k: GLOBAL[k] - 100 * (v - GLOBAL[k]) for k, v in _update(1, scale=0.1).items()}  # reversed, 100x
    norm = lambda w: float(np.sqrt(sum(np.sum((w[k].astype(np.float64) - GLOBAL[k]) ** 2) for k in GLOBAL)))  # noqa: E731
    aggregator = _aggregator(clip_factor=3.0)
    fl_ctx = _context()
    assert aggregator.accept(_result("HONEST", honest, 10), fl_ctx)
    assert aggregator.accept(_result("ATTACK", attack, 10), fl_ctx)
    result = from_shareable(aggregator.aggregate(fl_ctx)).data
    bound = 3 * norm(honest)
    clipped = {k: GLOBAL[k] + (attack[k] - GLOBAL[k]) * bound / norm(attack) for k in GLOBAL}
    for name in GLOBAL:  # by hand: the mean of the honest update and the attack scaled to 3 x its norm
        np.testing.assert_allclose(result[name], (honest[name] + clipped[name]) / 2, rtol=1e-5, atol=1e-6)
    assert norm(result) <= (3 + 1) / 2 * norm(honest) * 1.0001  # the attack moved the model by <= 2 honest norms
    notes = fl_ctx.get_prop(AGGREGATION_NOTES)
    assert set(notes["clipped"]) == {"ATTACK"} and notes["clip_bound"] == pytest.approx(bound)
    unguarded = _aggregator(clip_factor=0.0)
    fl_ctx = _context()
    for site, weights in (("HONEST", honest), ("ATTACK", attack)):
        assert unguarded.accept(_result(site, weights, 10), fl_ctx)
    plain = from_shareable(unguarded.aggregate(fl_ctx)).data  # what clipping prevents: the plain mean
    for name in GLOBAL:
        np.testing.assert_allclose(plain[name], (honest[name] + attack[name]) / 2, rtol=1e-5, atol=1e-6)
    assert norm(plain) > 10 * norm(result)


def test_clip_bound_uses_the_history_of_accepted_norms():
    assert clip_bound([], [1.0, 5.0], 3) == 3.0  # first round, two results: the smaller one
    assert clip_bound([], [1.0, 2.0, 9.0], 3) == 6.0  # lower median of three
    assert clip_bound([2.0, 4.0, 100.0], [50.0], 3) == 12.0  # later rounds: median of the history
    assert clip_bound([1.0], [1.0], 0) is None


def test_trimmed_mean_and_median_against_scipy_and_numpy():
    rng = np.random.default_rng(0)
    results = {s: {"w": rng.normal(size=(4, 6)).astype(np.float32)} for s in "ABCDE"}
    stack = np.stack([results[s]["w"].astype(np.float64) for s in "ABCDE"])
    equal = {s: 1.0 for s in results}
    np.testing.assert_allclose(trimmed_mean(results, equal, 1)["w"], stats.trim_mean(stack, 0.2, axis=0), rtol=1e-6)
    np.testing.assert_allclose(trimmed_mean(results, equal, 2)["w"], np.median(stack, axis=0), rtol=1e-6)
    # weights count among the kept values only: a site whose values are trimmed everywhere has no say
    results["E"] = {"w": np.full((4, 6), 1e3, np.float32)}
    weighted = {"A": 1.0, "B": 2.0, "C": 3.0, "D": 4.0, "E": 1e6}
    out = trimmed_mean(results, weighted, 1)["w"]
    stack = np.stack([results[s]["w"].astype(np.float64) for s in "ABCD"])
    assert (out <= stack.max(axis=0) + 1e-6).all() and (out >= np.sort(stack, axis=0)[1] - 1e-6).all()
    with pytest.raises(ValueError, match="needs more than 2 results"):
        trimmed_mean({s: results[s] for s in "AB"}, weighted, 1)


def test_median_bounds_a_reversed_update_with_a_huge_sample_count():
    """Three honest sites and one that reverses its update and claims n_k = 1e6 from its first result
    (pinning cannot catch a lie told from the start): FedAvg follows the liar, the median does not."""
    honest = {s: _update(seed, scale=0.1) for seed, s in enumerate("ABC")}
    liar = {k: GLOBAL[k] - 5 * (v - GLOBAL[k]) for k, v in _update(7, scale=0.1).items()}

    def aggregate(**settings) -> dict:
        aggregator = _aggregator(clip_factor=0.0, outlier_factor=0.0, **settings)
        fl_ctx = _context()
        for site, weights in honest.items():
            assert aggregator.accept(_result(site, weights, 20), fl_ctx)
        assert aggregator.accept(_result("LIAR", liar, 1_000_000), fl_ctx)
        return from_shareable(aggregator.aggregate(fl_ctx)).data

    stack = {k: np.stack([honest[s][k] for s in "ABC"]) for k in GLOBAL}
    for name, value in aggregate(robust_mean="median").items():
        assert (value >= stack[name].min(0) - 1e-6).all() and (value <= stack[name].max(0) + 1e-6).all()
    fedavg = aggregate()
    for name in GLOBAL:
        np.testing.assert_allclose(fedavg[name], liar[name], atol=1e-3)  # FedAvg: the liar sets the model


# -- item 7: the best model is chosen from accepted results only --------------------------------------
def test_best_model_selection_ignores_rejected_results():
    selector = _server_component("model_selector")
    assert isinstance(selector, AcceptedModelSelector)
    selector.handle_event(EventType.START_RUN, FLContext())
    fl_ctx = _context()
    selector.handle_event(AppEventType.ROUND_STARTED, fl_ctx)
    claims = {"A": (0.40, 10, True), "B": (0.50, 30, True), "LIAR": (0.99, 1000, False), "OUTLIER": (0.95, 500, True)}
    for site, (dice, n, accepted) in claims.items():
        peer = FLContext()
        peer.set_prop(ReservedKey.IDENTITY_NAME, site)
        fl_ctx.set_peer_context(peer)
        shareable = _result(site, _update(0), n, **{MetaKey.INITIAL_METRICS: {VAL_DICE: dice}})
        peer.set_prop(FLContextKey.SHAREABLE, shareable)
        fl_ctx.set_prop(AppConstants.TRAINING_RESULT, shareable, private=True, sticky=False)
        selector.handle_event(AppEventType.BEFORE_CONTRIBUTION_ACCEPT, fl_ctx)
        fl_ctx.set_prop(AppConstants.AGGREGATION_ACCEPTED, accepted, private=True, sticky=False)
        selector.handle_event(AppEventType.AFTER_CONTRIBUTION_ACCEPT, fl_ctx)
    selector.handle_event(AppEventType.BEFORE_AGGREGATION, fl_ctx)
    fl_ctx.set_prop(REJECTED_UPDATES, {"LIAR": "n_k", "OUTLIER": "update L2 distance"}, private=True, sticky=False)
    selector.handle_event(AppEventType.AFTER_AGGREGATION, fl_ctx)
    assert selector.best_val_metric == pytest.approx((0.40 * 10 + 0.50 * 30) / 40)


# -- item 7: the round report survives missing meta and counts accepted results only -------------------
def test_round_report_tolerates_missing_meta_and_skips_rejected_results(tmp_path, caplog):
    report = JobReport(train_sites=["A", "B", "C"])
    report.run_dir = tmp_path
    streamed = []  # the weighted Dice goes to TensorBoard (no engine here to stream it)
    report.sender.add = lambda tag, value, *args, **kwargs: streamed.append((tag, value))
    fl_ctx = _context()
    report.handle_event(AppEventType.ROUND_STARTED, fl_ctx)
    for site, meta in (("A", {TRAIN_LOSS: 0.5, BYTES_SENT: 1000}), ("B", {}), ("C", {TRAIN_LOSS: 0.1, BYTES_SENT: 10})):
        peer = FLContext()
        peer.set_prop(ReservedKey.IDENTITY_NAME, site)
        fl_ctx.set_peer_context(peer)
        dice = {"A": 0.4, "B": 0.6, "C": 0.99}[site]
        fl_ctx.set_prop(AppConstants.TRAINING_RESULT, _result(site, _update(0), 10, **{MetaKey.INITIAL_METRICS: {VAL_DICE: dice}}, **meta),
                        private=True, sticky=False)
        report.handle_event(AppEventType.BEFORE_CONTRIBUTION_ACCEPT, fl_ctx)
    fl_ctx.set_prop(REJECTED_UPDATES, {"C": "update L2 distance"}, private=True, sticky=False)
    with caplog.at_level(logging.INFO):
        report.handle_event(AppEventType.ROUND_DONE, fl_ctx)
    line = next(r.getMessage() for r in caplog.records if f"round {ROUND}: A: " in r.getMessage())
    assert "B: loss - Dice 0.6000 up - down -" in line and "weighted Dice 0.5000" in line
    rounds = json.loads((tmp_path / "fedfms_rounds.json").read_text())
    assert rounds[0]["weighted_val_dice"] == pytest.approx(0.5) and rounds[0]["rejected"] == {"C": "update L2 distance"}
    assert streamed == [("weighted_val_dice", pytest.approx(0.5))]


# -- item 2: finite models everywhere ------------------------------------------------------------------
def test_a_site_refuses_a_non_finite_global_model():
    executor = BundleExecutor("prostate")
    executor.names = frozenset(GLOBAL)
    bad = {k: v.copy() for k, v in GLOBAL.items()}
    bad["b"][2] = np.inf
    with pytest.raises(NonFiniteModelError, match="server .round 3. is not finite: tensor b holds 1 non-finite"):
        executor._received(DXO(DataKind.WEIGHTS, bad).to_shareable(), "server (round 3)", network=None)
    assert executor._received(DXO(DataKind.WEIGHTS, GLOBAL).to_shareable(), "server", network=None).weights.keys() == GLOBAL.keys()
    assert nonfinite({"x": torch.tensor([1.0, float("nan")]), "n": torch.tensor([3])}) == \
        "tensor x holds 1 non-finite values (1 of 2 tensors affected)"

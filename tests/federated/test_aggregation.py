"""Server-side bad-update protection and FedSCA weights: crafted site results through the aggregator
exactly as a job configures it (GuardedAggregator, a subclass of NVFlare's in-time aggregator)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.fuel.utils.class_utils import instantiate_class

from fedfms.orchestration.jobs import JobSettings, job_configs
from fedfms.runtime.aggregation import REJECTED_UPDATES, GuardedAggregator, check_update, fedsca_weights, outliers

REPO = Path(__file__).resolve().parents[2]
ROUND = 2
GLOBAL = {"a": np.zeros((3, 4), np.float32), "b": np.ones(5, np.float32)}


def _aggregator(**settings) -> tuple[GuardedAggregator, FLContext]:
    """The aggregator of a generated job's server config, started like NVFlare starts it."""
    config = job_configs(JobSettings("fedmsa", "prostate", **settings), REPO / "bundles")["server"]
    spec = next(c for c in config["components"] if c["id"] == "aggregator")
    aggregator = instantiate_class(spec["path"], spec["args"])
    assert isinstance(aggregator, GuardedAggregator)
    fl_ctx = FLContext()
    aggregator.handle_event(EventType.START_RUN, fl_ctx)
    fl_ctx.set_prop(AppConstants.CURRENT_ROUND, ROUND, private=True, sticky=False)
    fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable(GLOBAL, {}), private=True, sticky=False)
    return aggregator, fl_ctx


def _result(site: str, weights: dict, n: int, rc: str = ReturnCode.OK):
    shareable = DXO(DataKind.WEIGHTS, weights, {MetaKey.NUM_STEPS_CURRENT_ROUND: n}).to_shareable()
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, ROUND)
    shareable.set_return_code(rc)
    return shareable


def _update(seed: int, scale: float = 0.1) -> dict:
    rng = np.random.default_rng(seed)
    return {k: (v + scale * rng.normal(size=v.shape)).astype(np.float32) for k, v in GLOBAL.items()}


def _weighted_mean(results: dict, names) -> dict:
    total = sum(results[s][1] for s in names)
    return {k: sum(results[s][0][k].astype(np.float64) * results[s][1] for s in names) / total for k in GLOBAL}


def test_bad_results_are_rejected_with_site_and_reason_and_the_rest_is_averaged(caplog):
    good = {"A": (_update(0), 10), "B": (_update(1), 30), "C": (_update(2), 20)}
    nan = _update(3)
    nan["a"][1, 2] = np.nan
    crafted = {
        "NAN": (nan, 50, "non-finite"),
        "SHAPE": ({"a": np.zeros((4, 3), np.float32), "b": GLOBAL["b"]}, 50, "shape"),
        "NAMES": ({"a": GLOBAL["a"], "encoder.w": GLOBAL["b"]}, 50, "tensor names"),
        "SCALED": ({k: GLOBAL[k] + 100 * (v - GLOBAL[k]) for k, v in _update(4).items()}, 50, "round median"),
    }
    aggregator, fl_ctx = _aggregator()
    with caplog.at_level(logging.INFO):
        for site, (weights, n) in good.items():
            assert aggregator.accept(_result(site, weights, n), fl_ctx)
        for site, (weights, n, _) in crafted.items():
            # structural problems are refused at once; the outlier only when the round is complete
            assert aggregator.accept(_result(site, weights, n), fl_ctx) is (site == "SCALED")
        assert not aggregator.accept(_result("A", good["A"][0], 10), fl_ctx)  # second result of a site
        late = _result("LATE", good["A"][0], 10)
        late.add_cookie(AppConstants.CONTRIBUTION_ROUND, ROUND - 1)
        assert not aggregator.accept(late, fl_ctx)  # a result of the previous round
        assert not aggregator.accept(_result("FAILED", good["A"][0], 10, ReturnCode.EXECUTION_EXCEPTION), fl_ctx)
        result = from_shareable(aggregator.aggregate(fl_ctx)).data
    rejected = fl_ctx.get_prop(REJECTED_UPDATES)  # what the round report records
    assert set(rejected) == {*crafted, "FAILED"} and "round median" in rejected["SCALED"]
    expected = _weighted_mean(good, good)
    for name in GLOBAL:
        np.testing.assert_allclose(result[name], expected[name], rtol=1e-5, atol=1e-7)
    rejections = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    for site, (_, _, reason) in crafted.items():
        assert any(f"result of {site} rejected" in m and reason in m for m in rejections), (site, rejections)
    assert not any(f"result of {site} rejected" in m for site in good for m in rejections)


def test_next_round_starts_empty_and_two_sites_skip_the_outlier_test():
    aggregator, fl_ctx = _aggregator(clip_factor=0.0)  # clipping (tests/federated/test_faults.py) would bound B
    far = {k: v + 50 for k, v in GLOBAL.items()}
    for site, weights in (("A", _update(0)), ("B", far)):
        assert aggregator.accept(_result(site, weights, 1), fl_ctx)
    result = from_shareable(aggregator.aggregate(fl_ctx)).data
    np.testing.assert_allclose(result["b"], (_update(0)["b"] + far["b"]) / 2, rtol=1e-6)  # a median of 2 cannot judge
    assert fl_ctx.get_prop(REJECTED_UPDATES) == {}
    # the held results were consumed, and reset (ScatterAndGather calls it after every round) drops
    # results held for an unfinished round: the next round aggregates only what arrives after it
    fl_ctx.set_prop(AppConstants.CURRENT_ROUND, ROUND + 1, private=True, sticky=False)
    for site, seed in (("Z", 5), ("C", 7)):
        if site == "C":
            aggregator.reset(fl_ctx)
        shareable = _result(site, _update(seed), 4)
        shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, ROUND + 1)
        assert aggregator.accept(shareable, fl_ctx)
    np.testing.assert_allclose(from_shareable(aggregator.aggregate(fl_ctx)).data["a"], _update(7)["a"], rtol=1e-6)


def test_pure_checks():
    assert check_update(_update(0), GLOBAL) is None
    assert "tensor b holds 5 non-finite" in check_update({**GLOBAL, "b": np.full(5, np.inf, np.float32)}, GLOBAL)
    assert check_update({**GLOBAL, "c": np.arange(3)}, GLOBAL).startswith("tensor names differ")
    assert set(outliers({"A": 1.0, "B": 1.2, "C": 6.1}, factor=5)) == {"C"}
    assert set(outliers({"A": 1.0, "B": 1.2, "C": 5.9}, factor=5)) == set()
    assert outliers({"A": 1.0, "B": 100.0}, factor=5) == {}
    assert outliers({"A": 1.0, "B": 1.0, "C": 100.0}, factor=0) == {}


def test_plain_nvflare_aggregator_when_protection_is_off():
    config = job_configs(JobSettings("fedmsa", "prostate", reject_bad_updates=False, clip_factor=0.0),
                         REPO / "bundles")["server"]
    spec = next(c for c in config["components"] if c["id"] == "aggregator")
    assert spec["path"].endswith("InTimeAccumulateWeightedAggregator") and "outlier_factor" not in spec["args"]
    with pytest.raises(ValueError, match="aggregation"):
        JobSettings("fedmsa", "prostate", aggregation="median")


def test_fedsca_weights_follow_update_similarity_and_data_size():
    direction = {"a": np.ones((3, 4), np.float32), "b": np.ones(5, np.float32)}
    agree = lambda s, t: {k: GLOBAL[k] + s * direction[k] + t * _update(9)[k] for k in GLOBAL}  # noqa: E731
    results = {"A": (agree(0.1, 0.0), 10), "B": (agree(0.2, 0.01), 10), "C": (agree(-0.1, 0.0), 10)}
    weights = fedsca_weights({s: w for s, (w, _) in results.items()}, GLOBAL, temperature=0.5)
    # by hand: cosine(A, B) ~ 1, cosine(A, C) = -1 -> similarities ~ (0, 0, -1)
    unit = {s: np.concatenate([(w[k] - GLOBAL[k]).ravel() for k in sorted(GLOBAL)]) for s, (w, _) in results.items()}
    unit = {s: v / np.linalg.norm(v) for s, v in unit.items()}
    sim = {s: np.mean([unit[s] @ unit[o] for o in unit if o != s]) for s in unit}
    soft = {s: np.exp(sim[s] / 0.5) for s in sim}
    assert weights == pytest.approx({s: soft[s] / sum(soft.values()) for s in soft}, rel=1e-6)
    assert weights["C"] < weights["A"] and sum(weights.values()) == pytest.approx(1)

    aggregator, fl_ctx = _aggregator(aggregation="fedsca", fedsca_temperature=0.5)
    sizes = {"A": 10, "B": 30, "C": 20}
    for site, (w, _) in results.items():
        assert aggregator.accept(_result(site, w, sizes[site]), fl_ctx)
    result = from_shareable(aggregator.aggregate(fl_ctx)).data
    mix = {s: weights[s] * sizes[s] for s in sizes}
    for name in GLOBAL:
        expected = sum(results[s][0][name].astype(np.float64) * mix[s] for s in mix) / sum(mix.values())
        np.testing.assert_allclose(result[name], expected, rtol=1e-5)
        fedavg = sum(results[s][0][name].astype(np.float64) * sizes[s] for s in sizes) / sum(sizes.values())
        assert not np.allclose(result[name], fedavg)


def test_the_average_does_not_depend_on_the_order_results_arrive_in():
    """float32 sums depend on their order (here 3e7 + 1 - 3e7): the simulator's sites finish in an order
    that changes with the machine's load, and a seeded run must give the same model whatever it was."""
    values = {"A": 3e7, "B": 1.0, "C": -3e7, "D": 1.0}
    results = {site: {k: np.full_like(v, value) for k, v in GLOBAL.items()} for site, value in values.items()}
    averages = []
    for order in (["A", "B", "C", "D"], ["A", "C", "B", "D"], ["D", "C", "B", "A"]):
        aggregator, fl_ctx = _aggregator(outlier_factor=0.0, clip_factor=0.0)  # plain weighted FedAvg
        for site in order:
            assert aggregator.accept(_result(site, results[site], 10), fl_ctx)
        averages.append(from_shareable(aggregator.aggregate(fl_ctx)).data)
    for average in averages[1:]:
        for name in GLOBAL:
            np.testing.assert_array_equal(average[name], averages[0][name])

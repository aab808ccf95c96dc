"""NVFlare simulator runs of the FedMSA job (tiny profile) with injected faults and lies
(fedfms.runtime.faults), each asserting the job's outcome and its round report (heavy):

- lying sample counts, a float64 upload and a result without meta: rejected or reported, the job finishes;
- a non-finite aggregate (protection off, n_k = NaN): the job stops with an error status, nothing NaN saved;
- a hung site: waited for once, not in the next round;
- resume: a second job continues the first one's rounds from its saved global model;
- differential privacy: what leaves a site is the clipped update plus noise of the configured size.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from fedfms.core.wire import GLOBAL_MODEL_IN_RUN

FAULT = "fedfms.runtime.faults.FaultInjection"


def _record(audit: Path, site: str, direction: str, index: int) -> tuple[dict, dict]:
    stem = f"{site}.{direction}.train.{index}"
    with np.load(audit / f"{stem}.npz") as arrays:
        return {k: arrays[k] for k in arrays.files}, json.loads((audit / f"{stem}.json").read_text())["meta"]


def _global(run) -> dict:
    return torch.load(run.server / GLOBAL_MODEL_IN_RUN, weights_only=True)["model"]


@pytest.mark.heavy
def test_lies_about_samples_and_dtypes_are_rejected_and_missing_meta_reported(run_simulator, small_settings):
    """Round 0: UCL reports n_k = NaN, HK sends no loss / bytes meta. Round 1: ISBI1_5 claims n_k = 1e6
    (its first was 3), UCL uploads float64. Only valid results are averaged; the job finishes."""
    run = run_simulator(small_settings("fedmsa", cross_site_eval=False), result_filters=[
        {"path": FAULT, "args": {"site": "UCL", "mode": "samples", "rounds": [0], "samples": float("nan")}},
        {"path": FAULT, "args": {"site": "HK", "mode": "drop_meta", "rounds": [0]}},
        {"path": FAULT, "args": {"site": "ISBI1_5", "mode": "samples", "rounds": [1], "samples": 1e6}},
        {"path": FAULT, "args": {"site": "UCL", "mode": "float64", "rounds": [1]}}])
    rounds = run.rounds
    assert [sorted(r["rejected"]) for r in rounds] == [["UCL"], ["ISBI1_5", "UCL"]]
    assert "not a finite positive integer" in rounds[0]["rejected"]["UCL"]
    assert "differs from the 3 this site reported first" in rounds[1]["rejected"]["ISBI1_5"]
    assert "dtype float64" in rounds[1]["rejected"]["UCL"]
    assert rounds[0]["sites"]["HK"]["train_loss"] is None and "HK: loss - Dice" in run.log
    # the final global model is HK's round-1 upload alone (the only valid result), finite, float32
    upload, meta = _record(run.audit, "HK", "out", 1)
    glob = _global(run)
    for name, value in upload.items():
        assert glob[name].dtype == torch.float32
        np.testing.assert_allclose(glob[name].numpy(), value, rtol=1e-6, atol=1e-7)
    # round 0 = n_k-weighted mean of HK (6) and ISBI1_5 (3): UCL's NaN weight did not poison it
    received = _record(run.audit, "HK", "in", 1)[0]
    hk, isbi = _record(run.audit, "HK", "out", 0)[0], _record(run.audit, "ISBI1_5", "out", 0)[0]
    for name in received:
        np.testing.assert_allclose(received[name], (6 * hk[name].astype(np.float64) + 3 * isbi[name]) / 9, rtol=1e-5, atol=1e-7)


@pytest.mark.heavy
def test_a_non_finite_global_model_stops_the_job_with_an_error(run_simulator, small_settings):
    """Protection off (NVFlare's plain aggregator): UCL's n_k = NaN makes the round-0 aggregate NaN. The
    server refuses to persist it and stops the job with a non-zero status instead of training on NaN."""
    run = run_simulator(small_settings("fedmsa", reject_bad_updates=False, clip_factor=0.0, cross_site_eval=False),
                        result_filters=[{"path": FAULT, "args": {"site": "UCL", "mode": "samples", "rounds": [0],
                                                                 "samples": float("nan")}}],
                        expect_success=False)
    assert run.returncode != 0, run.log[-3000:]
    assert "the aggregated global model of round 0 is not finite" in run.log
    assert not (run.server / GLOBAL_MODEL_IN_RUN).exists()  # nothing NaN was saved
    assert not (run.server / "fedfms_rounds.json").exists() or json.loads((run.server / "fedfms_rounds.json").read_text()) == []


def _waits(server_log: str) -> dict:
    """Per round, the seconds ScatterAndGather waited between the round's last result and the start of its
    aggregation (from the server's log.txt timestamps): the wait for sites that did not answer."""
    stamp = lambda line: datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")  # noqa: E731
    round_, last, waits = None, {}, {}
    for line in server_log.splitlines():
        found = re.search(r"Round (\d+) started\.", line)
        if found:
            round_ = int(found.group(1))
        elif round_ is not None and re.search(rf"Contribution from \S+ \w+ by the aggregator at round {round_}", line):
            last[round_] = stamp(line)
        elif round_ is not None and "Start aggregation." in line and round_ in last:
            waits[round_] = (stamp(line) - last[round_]).total_seconds()
    return waits


@pytest.mark.heavy
def test_a_hung_site_is_waited_for_once(run_simulator, small_settings):
    """ISBI1_5 holds its round-0 result back for 150 s; the server waits 40 s after the other two results,
    aggregates without it, and in round 1 does not wait for it at all."""
    wait = 40
    run = run_simulator(small_settings("fedmsa", cross_site_eval=False, wait_time_after_min_received=wait),
                        result_filters=[{"path": FAULT, "args": {"site": "ISBI1_5", "mode": "sleep", "rounds": [0],
                                                                 "seconds": 150}}])
    assert [r["missing"] for r in run.rounds] == [["ISBI1_5"], ["ISBI1_5"]]
    assert "round 1: not waiting for ['ISBI1_5']" in run.log
    waits = _waits((run.server.parent / "log.txt").read_text())
    assert waits[0] >= wait - 1 and waits[1] < 10, waits  # round 1 did not wait the 40 s again


@pytest.mark.heavy
@pytest.mark.timeout(2400)  # two simulator runs
def test_a_resumed_job_continues_from_the_saved_model_and_report(run_simulator, small_settings):
    """Job 1 runs rounds 0-1; job 2 (resume_from = job 1's server run folder, 4 rounds in all) trains
    rounds 2-3 from job 1's last global model, its report keeping job 1's rounds as they were."""
    first = run_simulator(small_settings("fedmsa", cross_site_eval=False), workspace_name="first")
    profile = small_settings("fedmsa").profile.override(rounds=4)
    second = run_simulator(small_settings("fedmsa", profile=profile, resume_from=str(first.server)), audit=True,
                           workspace_name="second")
    assert [r["round"] for r in second.rounds] == [0, 1, 2, 3]
    assert second.rounds[:2] == first.rounds and second.rounds[2]["resumed_from"] == str(first.server)
    assert "resuming" in second.log and "at round 2 of 4" in second.log
    saved = _global(first)
    received, _ = _record(second.audit, "HK", "in", 0)  # the first model job 2 sent: job 1's last
    for name, value in received.items():
        np.testing.assert_array_equal(value, saved[name].numpy())
    assert set(json.loads((second.server / "cross_site_val" / "fedfms_results.json").read_text())) == {"HK", "ISBI1_5", "UCL"}


def _rdp_epsilon(sigma: float, rounds: int, delta: float) -> float:
    """Epsilon of ``rounds`` Gaussian mechanisms (sampling rate 1) by hand: RDP of order a is
    rounds * a / (2 sigma^2); converted with Canonne-Kamath-Steinke's bound (what Opacus uses), minimised
    over a fine grid of orders."""
    orders = np.concatenate([np.linspace(1.01, 10, 2000), np.linspace(10, 256, 2000)])
    rdp = rounds * orders / (2 * sigma ** 2)
    eps = rdp + np.log((orders - 1) / orders) - (np.log(delta) + np.log(orders)) / (orders - 1)
    return float(eps.min())


@pytest.mark.heavy
def test_differential_privacy_clips_noises_and_accounts(run_simulator, small_settings):
    clip, sigma, delta = 0.01, 0.5, 1e-4
    run = run_simulator(small_settings("fedmsa", dp_clip_norm=clip, dp_noise_multiplier=sigma, dp_delta=delta,
                                       cross_site_eval=False, clip_factor=0.0), audit=True)
    for site in ("HK", "ISBI1_5", "UCL"):
        for index in (0, 1):
            sent, meta = _record(run.audit, site, "out", index)
            received, _ = _record(run.audit, site, "in", index)
            delta_sq = sum(float(np.sum((sent[k].astype(np.float64) - received[k]) ** 2)) for k in sent)
            d = sum(v.size for v in sent.values())
            # noise: chi-square with d degrees of freedom around d (sigma C)^2, plus at most C^2 of update
            expected = d * (sigma * clip) ** 2
            assert expected * 0.95 < delta_sq < expected * 1.05 + clip ** 2 * 1.2, (site, index, delta_sq, expected)
            assert meta["dp_epsilon"] == pytest.approx(_rdp_epsilon(sigma, index + 1, delta), rel=0.02)
            assert meta["dp_delta"] == delta
    assert [r["sites"]["HK"]["dp_epsilon"] for r in run.rounds] == \
        [pytest.approx(_rdp_epsilon(sigma, n, delta), rel=0.02) for n in (1, 2)]
    assert math.isfinite(float(sum(v.float().sum() for v in _global(run).values() if v.is_floating_point())))

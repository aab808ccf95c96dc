"""NVFlare simulator run of a FedMSA job with half-precision transfer and FedSCA aggregation (heavy):
float16 on the wire both ways, the server's aggregate = the FedSCA-weighted mean of what the sites sent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedfms.runtime.aggregation import fedsca_weights


def _record(audit: Path, site: str, direction: str, index: int) -> tuple[dict, dict]:
    stem = f"{site}.{direction}.train.{index}"
    with np.load(audit / f"{stem}.npz") as arrays:
        return {k: arrays[k] for k in arrays.files}, json.loads((audit / f"{stem}.json").read_text())["meta"]


@pytest.mark.heavy
def test_fedmsa_half_precision_fedsca_simulator(run_simulator, small_settings, small_sites):
    run = run_simulator(small_settings("fedmsa", half_precision=True, aggregation="fedsca", fedsca_temperature=0.1),
                        audit=True)
    sites = {site.replace(".", "_"): n for site, n in small_sites.items()}
    # every model that crossed the wire, to and from each site, was float16
    for path in run.audit.glob("*.train.*.npz"):
        with np.load(path) as arrays:
            assert {str(arrays[k].dtype) for k in arrays.files} == {"float16"}, path.name
    assert run.log.count("with fedsca weights") == 2 and "rejected" not in run.log

    # last round: the sites' float16 uploads, weighted by n_k x softmax(similarity / T) of their updates
    # from the model they received (the server's float32 global model rounded to float16: the weights
    # recomputed here differ slightly from the server's, hence the tolerance)
    uploads = {site: _record(run.audit, site, "out", 1) for site in sites}
    reference = {k: v.astype(np.float32) for k, v in _record(run.audit, next(iter(sites)), "in", 1)[0].items()}
    assert {site: meta["NUM_STEPS_CURRENT_ROUND"] for site, (_, meta) in uploads.items()} == sites
    half = sum(a.nbytes for a in uploads["HK"][0].values())  # the round report counts the float16 bytes
    assert all(half < v["bytes_sent"] < half * 1.01 for r in run.rounds for v in r["sites"].values())
    uploaded = {s: {k: v.astype(np.float32) for k, v in a.items()} for s, (a, _) in uploads.items()}
    glob = torch.load(run.server / "app_server" / "FL_global_model.pt", weights_only=True)["model"]

    def error(weights: dict) -> float:
        """Largest deviation of the global model from the mean of the uploads weighted by weights x n_k."""
        mix = {s: weights[s] * sites[s] for s in sites}
        return max(np.abs(glob[name].numpy() - sum(uploaded[s][name].astype(np.float64) * mix[s] for s in sites)
                          / sum(mix.values())).max() for name in reference)

    fedsca, fedavg = error(fedsca_weights(uploaded, reference, temperature=0.1)), error({s: 1.0 for s in sites})
    print(f"\nlargest deviation from the FedSCA mean {fedsca:.3g}, from the FedAvg mean {fedavg:.3g}")
    assert fedsca < 5e-6 and fedsca * 4 < fedavg  # FedSCA's mean, measurably not FedAvg's


def _weighted_mean(uploads: dict, sizes: dict, names) -> dict:
    total = sum(sizes[s] for s in uploads)
    return {n: sum(uploads[s][n].astype(np.float64) * sizes[s] for s in uploads) / total for n in names}


@pytest.mark.heavy
def test_fedmsa_simulator_survives_bad_updates(run_simulator, small_settings, small_sites):
    """Round 0: UCL sends a NaN (refused on arrival); round 1: ISBI1_5 sends a 100x diverged model (an
    outlier among the round's three results). Both rounds aggregate the other sites and the job finishes."""
    corrupt = "fedfms_audit.CorruptFilter"
    run = run_simulator(small_settings("fedmsa"), result_filters=[
        {"path": corrupt, "args": {"site": "UCL", "index": 0, "mode": "nan"}},
        {"path": corrupt, "args": {"site": "ISBI1_5", "index": 1, "mode": "scale"}}])
    assert "round 0: result of UCL rejected: tensor" in run.log and "non-finite values" in run.log
    assert "round 1: result of ISBI1_5 rejected: update L2 distance" in run.log
    assert run.log.count("rejected:") == 2
    assert [sorted(r["rejected"]) for r in run.rounds] == [["UCL"], ["ISBI1_5"]]
    assert "non-finite" in run.rounds[0]["rejected"]["UCL"] and not any(r["missing"] for r in run.rounds)
    sizes = {site.replace(".", "_"): n for site, n in small_sites.items()}
    round0 = {s: _record(run.audit, s, "out", 0)[0] for s in ("HK", "ISBI1_5")}
    round1 = {s: _record(run.audit, s, "out", 1)[0] for s in ("HK", "UCL")}
    names = list(round0["HK"])
    # the model every site received in round 1 = the round-0 mean without UCL
    for site in sizes:
        received = _record(run.audit, site, "in", 1)[0]
        expected = _weighted_mean(round0, sizes, names)
        for name in names:
            np.testing.assert_allclose(received[name], expected[name], rtol=1e-5, atol=1e-7)
    # the final global model = the round-1 mean without ISBI1_5
    glob = torch.load(run.server / "app_server" / "FL_global_model.pt", weights_only=True)["model"]
    expected = _weighted_mean(round1, sizes, names)
    for name in names:
        np.testing.assert_allclose(glob[name].numpy(), expected[name], rtol=1e-5, atol=1e-7)
    assert np.isfinite(np.concatenate([glob[n].numpy().ravel() for n in names])).all()

"""End-to-end NVFlare simulator runs of the real jobs (tiny profile): FedMSA with a held-out site and a
full audit of what crossed the wire, FedSAM with a failing site."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedfms.core.wire import FROZEN_SHA256
from fedfms.runtime.selection import describe, frozen_fingerprint
from fedfms.networks import MSASegmenter, SAMSegmenter


def _records(audit: Path, direction: str, task: str) -> list[tuple[str, dict, dict]]:
    """(site, arrays, meta) of every recorded model of one direction and task."""
    out = []
    for meta_file in sorted(audit.glob(f"*.{direction}.{task}.*.json")):
        record = json.loads(meta_file.read_text())
        with np.load(meta_file.with_suffix(".npz")) as arrays:
            out.append((meta_file.name.split(".")[0], {k: arrays[k] for k in arrays.files}, record))
    return out


def _global_model(run) -> dict:
    return torch.load(run.server / "app_server" / "FL_global_model.pt", weights_only=True)["model"]


def test_fedmsa_simulator_sends_only_adapters_decoder_head_and_averages_by_samples(
        run_simulator, small_settings, small_sites, sam_checkpoint):
    run = run_simulator(small_settings("fedmsa", held_out=("UCL",)), audit=True)
    reference = MSASegmenter(model_type="vit_tiny", image_size=64)
    state = reference.state_dict()
    expected = [(k, tuple(state[k].shape), str(state[k].numpy().dtype)) for k in sorted(reference.transmitted_keys())]
    assert all(k.startswith("mask_decoder.") or "_adapter." in k for k, _, _ in expected)

    # Every model that reached or left a site, in both directions and for both tasks, is exactly the
    # transmitted state: no frozen encoder tensor, not even in round 0 or in cross-site evaluation.
    sent = _records(run.audit, "out", "train")
    received = _records(run.audit, "in", "train") + _records(run.audit, "in", "validate")
    assert len(sent) == 2 * 2 and len(received) == 2 * 2 + 3 * 2  # 2 sites x 2 rounds; 3 sites x 2 models
    for _, arrays, _ in sent + received:
        assert describe(arrays) == expected
    assert {site for site, _, _ in sent} == {"HK", "ISBI1_5"}  # the held-out site never trains
    # ... and every model the server sent names the frozen weights it was built on: the shared checkpoint.
    site_model = MSASegmenter(model_type="vit_tiny", image_size=64, checkpoint=sam_checkpoint)
    fingerprint = frozen_fingerprint(site_model.state_dict(), reference.transmitted_keys())
    round0 = [json.loads(p.read_text())["meta"] for p in run.audit.glob("*.in.train.0.json")]
    evaluated = [record["meta"] for _, _, record in _records(run.audit, "in", "validate")]
    assert [m.get(FROZEN_SHA256) for m in round0 + evaluated] == [fingerprint] * (2 + 6)

    # FedAvg weighted by each site's number of training samples, checked against a hand-computed mean.
    final_round = {site: (arrays, record["meta"]["NUM_STEPS_CURRENT_ROUND"]) for site, arrays, record in sent}  # index 1 last
    assert {site: n for site, (_, n) in final_round.items()} == {"HK": small_sites["HK"], "ISBI1_5": small_sites["ISBI1.5"]}
    total = sum(n for _, n in final_round.values())
    glob = _global_model(run)
    differs_from_plain_mean = False
    for name, _, _ in expected:
        weighted = sum(arrays[name].astype(np.float64) * n for arrays, n in final_round.values()) / total
        np.testing.assert_allclose(glob[name].numpy(), weighted, rtol=1e-5, atol=1e-6)
        plain = np.mean([arrays[name] for arrays, _ in final_round.values()], axis=0)
        differs_from_plain_mean |= not np.allclose(weighted, plain, rtol=1e-5, atol=1e-6)
    assert differs_from_plain_mean

    # The server holds the full model; its frozen part is the (shared) SAM checkpoint.
    frozen = torch.load(sam_checkpoint, weights_only=True)
    assert set(glob) == set(state)
    assert all(torch.equal(glob[k], frozen[k]) for k in state if k in frozen and k not in set(reference.transmitted_keys()))

    # Per-round report: each training site's loss, Dice and bytes sent (the serialized result).
    rounds = run.rounds
    assert [r["round"] for r in rounds] == [0, 1]
    for entry in rounds:
        assert set(entry["sites"]) == {"HK", "ISBI1_5"} and not entry["missing"]
        payload = sum(a.nbytes for a in sent[0][1].values())
        for values in entry["sites"].values():
            assert payload < values["bytes_sent"] < payload * 1.01
            assert 0.0 <= values["val_dice"] <= 1.0 and values["train_loss"] > 0
    assert "round 1: HK: loss" in run.log

    # Cross-site evaluation of the final and best global models on every site, held-out one included.
    results = json.loads((run.server / "cross_site_val" / "fedfms_results.json").read_text())
    assert set(results) == {"HK", "ISBI1_5", "UCL"}
    assert all(set(per_model) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt"} for per_model in results.values())
    assert "| UCL (held out) |" in (run.server / "cross_site_val" / "fedfms_results.md").read_text()
    assert (run.server / "app_server" / "best_FL_global_model.pt").is_file()
    assert list((run.server / "tb_events").glob("*/events.out.tfevents.*"))


@pytest.mark.heavy  # a third simulator run: the fast suite keeps the FedMSA wire audit and the int8 one
def test_fedsam_simulator_tolerates_a_failing_site(run_simulator, small_settings, sam_checkpoint):
    # BIDMC has no data under the data root: its every round fails, the other two keep training.
    run = run_simulator(small_settings("fedsam", sites=("HK", "ISBI1.5", "BIDMC")))
    assert [r["missing"] for r in run.rounds] == [["BIDMC"], ["BIDMC"]]
    assert all(set(r["sites"]) == {"HK", "ISBI1_5"} for r in run.rounds)
    assert "site BIDMC: task train failed" in run.log and "no result from BIDMC" in run.log

    # FedSAM exchanges every weight prompt-free training updates: the global model moved away from
    # the checkpoint exactly there, and kept the checkpoint elsewhere (prompt encoder, IoU head).
    reference = SAMSegmenter(model_type="vit_tiny", image_size=64)
    transmitted = set(reference.transmitted_keys())
    assert any(k.startswith("image_encoder.") for k in transmitted)
    glob, initial = _global_model(run), torch.load(sam_checkpoint, weights_only=True)
    assert all(torch.equal(glob[k], initial[k]) for k in initial if k not in transmitted)
    assert sum(not torch.equal(glob[k], initial[k]) for k in transmitted if k in initial) > len(transmitted) // 2

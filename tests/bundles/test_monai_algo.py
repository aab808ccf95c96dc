"""monai.fl.client.MonaiAlgo (what the federated executor builds on) drives a bundle: a round of local
training with the received weights, the trained weights back, evaluation of the test split."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.fl.client import MonaiAlgo
from monai.fl.utils.constants import ExtraItems, WeightType
from monai.fl.utils.exchange_object import ExchangeObject

REPO = Path(__file__).resolve().parents[2]


def test_monai_algo_runs_a_round_of_the_unet_bundle(small_datalist, tmp_path):
    overrides = {"datalist": str(small_datalist), "output_dir": str(tmp_path), "image_size": 64, "num_workers": 0}
    algo = MonaiAlgo(
        bundle_root=str(REPO / "bundles" / "unet"),
        local_epochs=1,
        send_weight_diff=False,
        train_kwargs=dict(overrides),
        eval_kwargs={**overrides, "output_dir": str(tmp_path / "eval")},
    )
    algo.initialize(extra={ExtraItems.CLIENT_NAME: "UCL"})
    global_weights = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in algo.trainer.network.state_dict().items()}

    algo.train(ExchangeObject(weights=global_weights, weight_type=WeightType.WEIGHTS))
    result = algo.get_weights()
    assert result.weight_type == WeightType.WEIGHTS and set(result.weights) == set(global_weights)
    assert any(not torch.equal(result.weights[k], global_weights[k]) for k in global_weights)
    assert (tmp_path / "model_final.pt").is_file()

    metrics = algo.evaluate(ExchangeObject(weights=result.weights, weight_type=WeightType.WEIGHTS)).metrics
    assert set(metrics) == {"val_dice", "val_iou"} and 0.0 <= metrics["val_iou"] <= metrics["val_dice"] <= 1.0
    # the evaluate config reports on the test split even when driven by MonaiAlgo (its loader is disabled)
    assert (tmp_path / "eval" / "evaluation_summary.json").is_file()

"""The paper's metrics against values computed by hand on tiny known predictions."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest
import torch
from monai.data import MetaTensor

from fedfms.bundle.metrics import SliceOverlapMetric, dice_from_counts, iou_from_counts, overlap_counts
from fedfms.bundle.report import EvaluationReport

POS, NEG = 2.0, -2.0
# three 2x3 slices, channel 0: a half-right prediction, an empty slice predicted empty, a false positive
LOGITS_C0 = [[[POS, POS, NEG], [NEG, NEG, NEG]], [[NEG] * 3, [NEG] * 3], [[POS, NEG, NEG], [POS, NEG, NEG]]]
LABEL_C0 = [[[1, 0, 0], [1, 0, 0]], [[0] * 3, [0] * 3], [[0] * 3, [0] * 3]]
# I = 1, |P| = 2, |G| = 2  |  I = 0, |P| = 0, |G| = 0  |  I = 0, |P| = 2, |G| = 0
DICE_C0 = [(2 + 1e-4) / (4 + 1e-4), 1.0, 1e-4 / (2 + 1e-4)]
IOU_C0 = [(1 + 1e-6) / (3 + 1e-6), 1.0, 1e-6 / (2 + 1e-6)]


def _batch(two_channels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    logits, label = torch.tensor(LOGITS_C0)[:, None], torch.tensor(LABEL_C0, dtype=torch.float32)[:, None]
    if two_channels:  # channel 1 predicts its label exactly
        label1 = torch.tensor([[[0, 1, 1], [0, 0, 0]]] * 3, dtype=torch.float32)[:, None]
        logits, label = torch.cat([logits, label1 * 4 - 2], 1), torch.cat([label, label1], 1)
    return logits, label


def test_slice_dice_and_iou_match_hand_computed_values():
    logits, label = _batch()
    counts = overlap_counts(logits, label)
    assert counts.shape == (3, 1, 1, 3)
    assert counts[:, 0, 0].tolist() == [[1, 2, 2], [0, 0, 0], [0, 2, 0]]
    assert dice_from_counts(counts)[:, 0].tolist() == pytest.approx(DICE_C0, rel=1e-12)
    assert iou_from_counts(counts)[:, 0].tolist() == pytest.approx(IOU_C0, rel=1e-12)


def test_reference_threshold_sweep_on_raw_logits():
    logits, label = torch.tensor([[[[0.2, 0.6, 1.0]]]]), torch.tensor([[[[0.0, 1.0, 1.0]]]])
    # thresholds 0.1 | 0.3 | 0.5 | 0.7 | 0.9 keep 3 | 2 | 2 | 1 | 1 pixels, of which 2 | 2 | 2 | 1 | 1 are true
    per_threshold = [(4 + 1e-4) / (5 + 1e-4), 1.0, 1.0, (2 + 1e-4) / (3 + 1e-4), (2 + 1e-4) / (3 + 1e-4)]
    assert dice_from_counts(overlap_counts(logits, label, "sweep")).item() == pytest.approx(sum(per_threshold) / 5)
    # sigmoid > 0.5 keeps all three positive logits
    assert dice_from_counts(overlap_counts(logits, label, "sigmoid")).item() == pytest.approx((4 + 1e-4) / (5 + 1e-4))


def test_cumulative_metric_averages_slices_and_channels():
    logits, label = _batch(two_channels=True)
    metric = SliceOverlapMetric("dice")
    metric(list(logits[:2]), list(label[:2]))  # decollated samples, as an evaluator passes them
    metric(logits[2:], label[2:])  # and a batch
    assert metric.get_buffer()[:, 0].tolist() == pytest.approx(DICE_C0)
    assert metric.aggregate().item() == pytest.approx((sum(DICE_C0) + 3) / 6, rel=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        overlap_counts(logits, label[:, :1])


def test_non_finite_outputs_score_as_failures_not_as_empty_masks(caplog):
    """A NaN output thresholds to "background", which would score 1 on an empty slice: instead each sample
    with a NaN/inf output counts as every pixel wrong (I = 0, |P| = pixels not in the label), with a warning."""
    logits, label = _batch()
    logits[1, 0, 0, 0] = float("nan")  # the empty slice predicted empty: Dice 1 when finite
    logits[2] = float("inf")
    with caplog.at_level("WARNING"):
        counts = overlap_counts(logits, label)
    assert counts[:, 0, 0].tolist() == [[1, 2, 2], [0, 6, 0], [0, 6, 0]]
    dice = dice_from_counts(counts)[:, 0]
    assert dice[0] == pytest.approx(DICE_C0[0]) and dice[1] < 1e-4 and dice[2] < 1e-4
    assert "2 of 3 samples have non-finite (NaN/inf) network outputs: scored as failures" in caplog.text
    metric = SliceOverlapMetric("dice")
    metric(logits, label)
    assert metric.aggregate().item() == pytest.approx(DICE_C0[0] / 3, rel=1e-3)


def test_report_writes_per_sample_csv_and_summary_with_3d_dice(tmp_path):
    logits, label = _batch(two_channels=True)
    # slices 0 and 1 of volume V (3D), then a 2D image (slice -1) that 3D Dice ignores
    identity = [("V", 0), ("V", 1), ("img", -1)]
    engine = SimpleNamespace(
        state=SimpleNamespace(
            batch=[
                {"image": MetaTensor(torch.zeros(3, 2, 3), meta={"filename_or_obj": f"{v}_{s}.npy"}), "site": site, "volume": v, "slice": s}
                for (v, s), site in zip(identity, ["S", "S", "T"])  # two pooled sites
            ],
            output=[{"pred": p, "label": g} for p, g in zip(logits, label)],
        )
    )
    report = EvaluationReport(str(tmp_path), ["OD", "OC"])
    report.collect(engine)
    summary = report.write(engine)

    with open(tmp_path / "evaluation_per_sample.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["volume"], int(r["slice"]), r["image"]) for r in rows] == [(v, s, f"{v}_{s}.npy") for v, s in identity]
    assert [float(r["dice_OD"]) for r in rows] == pytest.approx(DICE_C0)
    assert [float(r["iou_OD"]) for r in rows] == pytest.approx(IOU_C0)
    assert [float(r["dice_OC"]) for r in rows] == pytest.approx([1.0] * 3)

    saved = json.loads((tmp_path / "evaluation_summary.json").read_text())
    assert saved == summary
    assert saved["num_slices"] == 3 and saved["num_volumes"] == 1
    assert saved["per_channel"]["OD"]["dice"] == pytest.approx(sum(DICE_C0) / 3)
    assert saved["per_channel"]["OD"]["iou"] == pytest.approx(sum(IOU_C0) / 3)
    # volume V sums slices 0 and 1: I = 1, |P| = 2, |G| = 2 for OD; OC: I = 4, |P| = 4, |G| = 4
    assert saved["per_volume_dice_3d"]["S/V"]["OD"] == pytest.approx((2 + 1e-4) / (4 + 1e-4))
    assert saved["per_channel"]["OC"]["dice_3d"] == pytest.approx(1.0)
    assert saved["dice"] == pytest.approx((sum(DICE_C0) / 3 + 1) / 2)
    assert saved["per_site"]["S"]["per_channel"]["OD"]["dice"] == pytest.approx(sum(DICE_C0[:2]) / 2)
    assert saved["per_site"]["T"]["num_slices"] == 1 and "dice_3d" not in saved["per_site"]["T"]

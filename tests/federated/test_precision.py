"""Half-precision transfer: the filter chains a half_precision job configures halve the serialized
bytes of a FedMSA result and restore float32 with a bounded rounding error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_context import FLContext
from nvflare.fuel.utils.class_utils import instantiate_class

from fedfms.runtime.aggregation import check_update
from fedfms.core.wire import BYTES_SENT
from fedfms.orchestration.jobs import JobSettings, job_configs
from fedfms.registry import PAPER
from fedfms.runtime.selection import select_outgoing, serialized_size, transmitted_names
from fedfms.networks import MSASegmenter


REPO = Path(__file__).resolve().parents[2]


def _configs(settings: JobSettings) -> tuple[dict, dict]:
    """(server, client) configs of the job written for ``settings``."""
    configs = job_configs(settings, REPO / "bundles")
    return configs["server"], configs["client"]


def _chain(config: dict, key: str) -> list:
    """The filters of a config's only filter chain, instantiated as NVFlare would."""
    (chain,) = config[key]
    assert set(chain["tasks"]) == {"train", "validate"}
    return [instantiate_class(f["path"], f["args"]) for f in chain["filters"]]


def _apply(filters: list, dxo: DXO) -> DXO:
    shareable = dxo.to_shareable()
    for f in filters:
        shareable = f.process(shareable, FLContext())
    return from_shareable(shareable)


def test_half_precision_halves_the_bytes_both_ways_and_round_trips():
    settings = JobSettings("fedmsa", "prostate", PAPER.override(model_type="vit_tiny", image_size=64), half_precision=True)
    server, client = _configs(settings)
    network = MSASegmenter(model_type="vit_tiny", image_size=64)
    sent = select_outgoing(network.state_dict(), transmitted_names(network), "test")
    sent["counter"] = np.array(7, np.int64)  # non-float tensors (BatchNorm counters) pass unchanged
    meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: 12, "fedfms_frozen_sha256": "abc"}
    meta[BYTES_SENT] = serialized_size(DXO(DataKind.WEIGHTS, dict(sent), dict(meta)))  # as the executor sets it

    for sender, receiver in ((client["task_result_filters"], server["task_result_filters"]),   # upload
                             (server["task_data_filters"], client["task_data_filters"])):      # download
        on_wire = _apply(_chain({"c": sender}, "c"), DXO(DataKind.WEIGHTS, dict(sent), dict(meta)))
        full = serialized_size(DXO(DataKind.WEIGHTS, dict(sent), dict(meta)))
        half = serialized_size(on_wire)
        print(f"\nFedMSA vit_tiny result: {full:,} B float32, {half:,} B float16 ({half / full:.3f})")
        assert 0.49 < half / full < 0.52 and abs(on_wire.meta[BYTES_SENT] - half) < 100  # the report's figure (+- meta)
        assert {str(v.dtype) for k, v in on_wire.data.items() if k != "counter"} == {"float16"}
        received = _apply(_chain({"c": receiver}, "c"), on_wire)
        assert received.meta[MetaKey.NUM_STEPS_CURRENT_ROUND] == 12 and received.meta["fedfms_frozen_sha256"] == "abc"
        assert received.data["counter"].dtype == np.int64 and int(received.data["counter"]) == 7
        for name, value in sent.items():
            back = received.data[name]
            assert back.dtype == value.dtype and back.shape == value.shape
            # float16 keeps 11 significant bits: relative error <= 2**-11 in the normal range
            np.testing.assert_allclose(back, value, rtol=2.0 ** -11, atol=2.0 ** -24)
        assert check_update(received.data, sent) is None


def test_overflow_becomes_inf_and_is_rejected_not_clipped():
    server, client = _configs(JobSettings("fedmsa", "prostate", half_precision=True))
    weights = {"w": np.array([1.0, 7e4], np.float32)}
    received = _apply(_chain(client, "task_result_filters") + _chain(server, "task_result_filters"),
                      DXO(DataKind.WEIGHTS, weights))
    assert "non-finite" in check_update(received.data, weights)


def test_off_by_default_and_metrics_pass():
    server, client = _configs(JobSettings("fedmsa", "prostate"))
    assert not server["task_data_filters"] and not client["task_result_filters"]
    metrics = DXO(DataKind.METRICS, {"val_dice": np.float32(0.5)})
    out = _apply(_chain(_configs(JobSettings("fedmsa", "prostate", half_precision=True))[1], "task_result_filters"), metrics)
    assert out.data["val_dice"].dtype == np.float32

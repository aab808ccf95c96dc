"""int8 delta compression, top-k, error feedback and partial upload: the codec's error bounds, the job's
filter chains run in process (server and sites, several rounds), the aggregator under partial upload,
and the option checks. Expected values are computed here: ``read_delta`` is an independent reader of the
payload written from its documentation (fedfms.runtime.codec, README 'Efficiency'), not the code under test."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import make_reply
from nvflare.apis.workspace import Workspace
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.fuel.utils.class_utils import instantiate_class
from nvflare.job_config.defs import FilterType

from fedfms.core.wire import BYTES_SENT, CODEC
from fedfms.orchestration.jobs import JobSettings, job_configs
from fedfms.orchestration.transfer import transfer_filters
from fedfms.registry import PAPER
from fedfms.runtime.aggregation import GuardedAggregator
from fedfms.runtime.codec import Codec, CodecError, compress_with_feedback, decode, dequantize, quantize, upload_names
from fedfms.runtime.compression import ReceiveGlobalModel, SendUpdate

REPO = Path(__file__).resolve().parents[2]
TINY = PAPER.override(model_type="vit_tiny", image_size=64)


def read_delta(data: dict, layout: dict) -> dict:
    """{name: float64 delta} of a payload: NAME int8 (dense: the tensor's shape; top-k: kept entries in
    row-major order with NAME:mask = packed bits), NAME:scale of shape (C,) or (); other dtypes as they are."""
    out = {}
    for name, shape in layout["shapes"].items():
        shape = tuple(shape)
        values = np.asarray(data[name])
        if not np.issubdtype(np.dtype(layout["dtypes"][name]), np.floating):
            out[name] = values
            continue
        assert values.dtype == np.int8, name
        if name + ":mask" in data:
            numel = math.prod(shape)
            bits = np.asarray(data[name + ":mask"])
            assert bits.dtype == np.uint8 and bits.shape == ((numel + 7) // 8,), name
            mask = np.unpackbits(bits)[:numel].astype(bool)
            dense = np.zeros(numel)
            dense[mask] = values
            values = dense.reshape(shape)
        assert values.shape == shape, name
        scale = np.asarray(data[name + ":scale"])
        assert scale.dtype == np.float32 and scale.shape in ((), shape[:1]), name
        out[name] = values.astype(np.float64) * scale.astype(np.float64).reshape(scale.shape + (1,) * (len(shape) - scale.ndim))
    return out


def payload_names(data: dict) -> set:
    """The tensor names a payload carries (its keys without the :scale / :mask suffixes)."""
    return {key.split(":")[0] for key in data}


def _tensors(seed: int = 0, scale: float = 1.0) -> dict:
    """Shapes like a FedMSA model's: adapter and decoder weights (2-D, conv 4-D), biases (1-D), a scalar."""
    rng = np.random.default_rng(seed)
    shapes = {"image_encoder.blocks.0.mlp_adapter.fc1.weight": (16, 64), "image_encoder.blocks.0.mlp_adapter.fc1.bias": (16,),
              "image_encoder.blocks.1.space_adapter.fc2.weight": (64, 16), "mask_decoder.output_upscaling.0.weight": (8, 4, 2, 2),
              "mask_decoder.norm.weight": (32,), "class_head.scale": ()}
    return {n: np.array(scale * rng.standard_t(3, size=s), np.float32) for n, s in shapes.items()}


# -- the codec -------------------------------------------------------------------------------------
@pytest.mark.parametrize("per_channel", [True, False])
def test_quantize_error_is_at_most_half_a_step_of_max_over_127(per_channel):
    x = _tensors(1)["mask_decoder.output_upscaling.0.weight"]
    x[3] = 0.0  # an all-zero channel comes back exactly
    q, scale = quantize(x, per_channel)
    rows = x.reshape(len(x), -1) if per_channel else x.reshape(1, -1)
    expected_scale = np.abs(rows).max(axis=1) / 127  # the documented scale, computed here
    assert q.dtype == np.int8 and q.shape == x.shape and np.abs(q.astype(int)).max() <= 127
    assert scale.dtype == np.float32 and scale.shape == ((len(x),) if per_channel else ())
    np.testing.assert_allclose(scale.reshape(-1), expected_scale, rtol=1e-6)
    error = np.abs(dequantize(q, scale) - x).reshape(len(rows), -1)
    assert (error <= expected_scale[:, None] / 2 * (1 + 1e-5) + 1e-12).all()
    if per_channel:
        assert not dequantize(q, scale)[3].any()
        # one scale per output channel is never worse than one per tensor
        assert np.abs(dequantize(*quantize(x, True)) - x).max() <= np.abs(dequantize(*quantize(x, False)) - x).max()


def test_payload_follows_the_documented_format_dense_and_top_k():
    delta = _tensors(2, scale=1e-3)
    delta["counter"] = np.array(3, np.int64)  # non-floating: exact, in its own dtype
    for codec in (Codec("channel"), Codec("tensor"), Codec("channel", fraction=0.25)):
        data, layout = codec.encode(delta)
        assert payload_names(data) == set(delta) and layout["shapes"]["class_head.scale"] == []
        assert data["counter"].dtype == np.int64 and int(data["counter"]) == 3
        read = read_delta(data, layout)
        decoded = decode(data, layout)
        for name, x in delta.items():
            np.testing.assert_allclose(decoded[name], read[name], rtol=1e-6, atol=1e-12)
            assert decoded[name].dtype == x.dtype and decoded[name].shape == x.shape
            if not codec.fraction and name != "counter":
                step = np.abs(x).max() / 127  # per tensor bound; per channel is tighter
                assert np.abs(read[name] - x).max() <= step / 2 * (1 + 1e-5)
        if codec.fraction:
            x = delta["image_encoder.blocks.0.mlp_adapter.fc1.weight"]
            kept = read["image_encoder.blocks.0.mlp_adapter.fc1.weight"] != 0
            k = math.ceil(0.25 * x.size)
            assert kept.sum() == k  # exactly the top k by magnitude (no ties in continuous data)
            assert np.abs(x[kept]).min() >= np.sort(np.abs(x).ravel())[-k]


def test_malformed_payloads_are_refused_naming_the_tensor():
    data, layout = Codec(fraction=0.5).encode(_tensors(3))
    name = "mask_decoder.norm.weight"
    for broken, message in (({k: v for k, v in data.items() if k != name + ":scale"}, f"lacks {name}:scale"),
                            ({**data, name + ":mask": data[name + ":mask"][:-1]}, f"{name}:mask"),
                            ({**data, name: data[name][:-1]}, name),
                            ({**data, "extra": np.zeros(1)}, "does not describe")):
        with pytest.raises(CodecError, match=message):
            decode(broken, layout)


@pytest.mark.parametrize("fraction", [0.0, 0.1])
def test_error_feedback_delays_but_loses_nothing(fraction):
    """Over rounds, what was sent plus what is still held equals the sum of the updates; with top-k an entry
    too small to be sent at first is sent once its accumulated error is large enough."""
    codec, residual, sent_total = Codec(fraction=fraction), {}, None
    updates = [_tensors(10 + r, scale=1e-3) for r in range(6)]
    for r, update in enumerate(updates):
        data, layout, new_residual = compress_with_feedback(update, residual, codec)
        read = read_delta(data, layout)
        for name in update:  # applied: the payload encodes update + previous residual, the rest is kept
            np.testing.assert_allclose(read[name] + new_residual[name], update[name] + residual.get(name, 0), rtol=1e-5, atol=1e-9)
        if r == 1 and fraction:
            alone = read_delta(*codec.encode(update))
            assert any(not np.allclose(read[n], alone[n]) for n in update)
        residual = new_residual
        sent_total = read if sent_total is None else {n: sent_total[n] + read[n] for n in read}
    for name in updates[0]:
        np.testing.assert_allclose(sent_total[name] + residual[name], sum(u[name].astype(np.float64) for u in updates),
                                   rtol=1e-5, atol=1e-8)
    if fraction:
        constant, residual, rounds = {"w": np.array([1.0, 1.0, 1.0, 0.3], np.float32)}, {}, 0
        while True:  # top-1 of 4 a round: the small entry's error grows until it is the largest
            data, layout, residual = compress_with_feedback(constant, residual, Codec(fraction=0.25))
            rounds += 1
            if read_delta(data, layout)["w"][3]:
                break
            assert rounds < 50
        assert rounds > 3


def test_partial_upload_names_first_blocks_decoder_and_head():
    names = list(_tensors()) + ["image_encoder.blocks.11.mlp_adapter.fc1.weight", "image_encoder.blocks.10.x"]
    assert upload_names(names, 1) == sorted(n for n in names if "blocks.1" not in n)
    assert upload_names(names, 0) == ["class_head.scale", "mask_decoder.norm.weight", "mask_decoder.output_upscaling.0.weight"]
    assert upload_names(names, None) == sorted(names)
    with pytest.raises(ValueError):
        upload_names(names, -1)


# -- the job's filter chains, run in process ---------------------------------------------------------
def _context(identity: str, peer: str) -> FLContext:
    fl_ctx, peer_ctx = FLContext(), FLContext()
    fl_ctx.set_prop(ReservedKey.IDENTITY_NAME, identity, private=False, sticky=False)
    peer_ctx.set_prop(ReservedKey.IDENTITY_NAME, peer, private=False, sticky=False)
    fl_ctx.set_peer_context(peer_ctx)
    fl_ctx.set_prop(FLContextKey.TASK_NAME, "train", private=True, sticky=False)
    return fl_ctx


class Federation:
    """Server and sites of a job (its generated filter chains, one instance per participant), driven by hand."""

    def __init__(self, settings: JobSettings, sites):
        self.chains = {site: {(side, kind): fs for side, kind, fs in transfer_filters(settings)} for site in ("server", *sites)}
        self.server = {site: _context("server", site) for site in sites}
        self.site = {site: _context(site, "server") for site in sites}

    def _run(self, owner: str, side: str, kind: str, shareable, fl_ctx):
        for f in self.chains[owner].get((side, kind), []):
            shareable = f.process(shareable, fl_ctx)
        return shareable

    def download(self, site: str, weights: dict, round_: int):
        """(what crossed the wire, what the site's executor gets)."""
        shareable = DXO(DataKind.WEIGHTS, dict(weights)).to_shareable()
        shareable.set_header(AppConstants.CURRENT_ROUND, round_)
        self.server[site].set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable(weights, {}), private=True, sticky=True)
        wire = self._run("server", "server", FilterType.TASK_DATA, shareable, self.server[site])
        on_wire = from_shareable(wire)  # before the site's filters update the shareable in place
        return on_wire, from_shareable(self._run(site, "clients", FilterType.TASK_DATA, wire, self.site[site]))

    def upload(self, site: str, trained: dict, n: int, round_: int):
        """(what crossed the wire, what the aggregator gets)."""
        shareable = DXO(DataKind.WEIGHTS, trained, {MetaKey.NUM_STEPS_CURRENT_ROUND: n, BYTES_SENT: 0}).to_shareable()
        shareable.set_header(AppConstants.CURRENT_ROUND, round_)
        wire = self._run(site, "clients", FilterType.TASK_RESULT, shareable, self.site[site])
        on_wire = from_shareable(wire)
        return on_wire, from_shareable(self._run("server", "server", FilterType.TASK_RESULT, wire, self.server[site]))


def test_int8_both_ways_with_error_feedback_through_the_job_filters():
    settings = JobSettings("fedmsa", "prostate", TINY, compression="int8", topk_fraction=0.3, half_precision=True)
    fed = Federation(settings, ["A", "B"])
    glob = _tensors(20)
    # round 0: the full model (float16 with half precision), the same for everyone
    wire, received = fed.download("A", glob, 0)
    assert wire.data_kind == DataKind.WEIGHTS and {v.dtype for v in wire.data.values()} == {np.dtype(np.float16)}
    assert {v.dtype for v in received.data.values()} == {np.dtype(np.float32)}
    start = {n: v.astype(np.float16).astype(np.float32) for n, v in glob.items()}
    assert all(np.array_equal(received.data[n], start[n]) for n in glob)
    fed.download("B", glob, 0)

    updates = {"A": _tensors(21, 1e-2), "B": _tensors(22, 1e-2)}
    residual = {}
    for site, n in (("A", 3), ("B", 1)):
        trained = {k: start[k] + updates[site][k] for k in glob}
        wire, result = fed.upload(site, trained, n, 0)
        assert wire.data_kind == DataKind.APP_DEFINED and payload_names(wire.data) == set(glob)
        assert {str(v.dtype) for k, v in wire.data.items()} == {"int8", "float32", "uint8"}  # float16 never touches it
        assert wire.meta[MetaKey.NUM_STEPS_CURRENT_ROUND] == n and wire.meta[CODEC]["fraction"] == 0.3
        # re-measured on the payload (NVFlare appends the filter history to the meta afterwards: a few bytes)
        assert abs(wire.meta[BYTES_SENT] - fed_size(wire)) < 100
        sent = read_delta(wire.data, wire.meta[CODEC])
        # the server adds the update to ITS global model (not the sites' float16 copy)
        assert result.data_kind == DataKind.WEIGHTS and CODEC not in result.meta
        for k in glob:
            np.testing.assert_allclose(result.data[k], glob[k] + sent[k], rtol=1e-6, atol=1e-6)
        residual[site] = {k: updates[site][k] - sent[k] for k in glob}

    # round 1: the site's second update carries the first one's error
    glob1 = {k: (glob[k] + (3 * updates["A"][k] + updates["B"][k]) / 4).astype(np.float32) for k in glob}
    wire, received = fed.download("A", glob1, 1)
    assert wire.data_kind == DataKind.APP_DEFINED and wire.meta[CODEC]["base_sha256"]
    delta = read_delta(wire.data, wire.meta[CODEC])
    for k in glob:  # the site rebuilt its copy + the delta against it
        np.testing.assert_allclose(received.data[k], start[k] + delta[k], rtol=1e-6, atol=1e-6)
    second = _tensors(23, 1e-2)
    wire, _ = fed.upload("A", {k: received.data[k] + second[k] for k in glob}, 3, 1)
    sent = read_delta(wire.data, wire.meta[CODEC])
    alone = read_delta(*Codec(fraction=0.3).encode(second))
    sender = fed.chains["A"][("clients", FilterType.TASK_RESULT)][0]
    assert isinstance(sender, SendUpdate)
    for k in glob:  # payload + new error = this update + the previous error
        new_error = sender.residual[k]
        # (float32 rounding of trained - received: ulp of the weights, up to ~1e-6 here)
        np.testing.assert_allclose(sent[k] + new_error, second[k] + residual["A"][k], rtol=1e-4, atol=2e-6)
    assert any(not np.allclose(sent[k], alone[k]) for k in glob)

    # B missed nothing: it gets the same delta; a site that never received round 0 gets the full model
    wire_b, received_b = fed.download("B", glob1, 1)
    assert wire_b.data_kind == DataKind.APP_DEFINED and all(np.array_equal(received_b.data[k], received.data[k]) for k in glob)
    fed.chains["C"] = {(side, kind): fs for side, kind, fs in transfer_filters(settings)}
    fed.server["C"], fed.site["C"] = _context("server", "C"), _context("C", "server")
    assert fed.download("C", glob1, 1)[0].data_kind == DataKind.WEIGHTS


def fed_size(dxo: DXO) -> int:
    from fedfms.runtime.selection import serialized_size

    return serialized_size(dxo)


def test_a_site_that_lost_its_copy_refuses_the_delta_and_gets_the_full_model_after_a_failed_result(caplog):
    fed = Federation(JobSettings("fedmsa", "prostate", TINY, compression="int8"), ["A"])
    glob = _tensors(30)
    fed.download("A", glob, 0)
    receiver = fed.chains["A"][("clients", FilterType.TASK_DATA)][0]
    assert isinstance(receiver, ReceiveGlobalModel)
    receiver.model = None  # e.g. the site's process restarted
    glob1 = {k: v + 1e-3 for k, v in glob.items()}
    with pytest.raises(CodecError, match="delta against a model this site does not hold"):
        fed.download("A", glob1, 1)
    # the site answers the round with an error; the server's result filter sees it ...
    failed = make_reply(ReturnCode.TASK_DATA_FILTER_ERROR)
    fed._run("server", "server", FilterType.TASK_RESULT, failed, fed.server["A"])
    wire, received = fed.download("A", {k: v + 2e-3 for k, v in glob.items()}, 2)  # ... and sends the full model next
    assert wire.data_kind == DataKind.WEIGHTS
    # which is the sites' copy, not the server's model: everyone holds the same
    assert all(np.abs(received.data[k] - (glob[k] + 2e-3)).max() < 1e-4 for k in glob)


class _Engine:
    """What the filters ask of a site's engine: its workspace (run folders under ``root``)."""

    def __init__(self, root: Path, site: str):
        for folder in ("startup", "local"):  # what NVFlare's Workspace checks for
            (root / folder).mkdir(exist_ok=True)
        self.workspace = Workspace(root_dir=str(root), site_name=site)

    def get_workspace(self) -> Workspace:
        return self.workspace


def test_a_restarted_site_resumes_its_copy_and_residual_from_its_run_folder(tmp_path):
    settings = JobSettings("fedmsa", "prostate", TINY, compression="int8", topk_fraction=0.3)
    fed = Federation(settings, ["A"])
    site = fed.site["A"]
    site.set_prop(ReservedKey.ENGINE, _Engine(tmp_path, "A"), private=True, sticky=False)
    site.set_prop(ReservedKey.RUN_NUM, "job-1", private=False, sticky=False)
    glob = _tensors(70)
    _, received = fed.download("A", glob, 0)
    fed.upload("A", {k: v + _tensors(71, 1e-2)[k] for k, v in received.data.items()}, 4, 0)
    residual = dict(fed.chains["A"][("clients", FilterType.TASK_RESULT)][0].residual)
    run_dir = Path(site.get_engine().get_workspace().get_run_dir("job-1"))
    assert sorted(p.name for p in run_dir.iterdir()) == ["fedfms_received_model.npz", "fedfms_update_residual.npz"]

    fed.chains["A"] = {(side, kind): fs for side, kind, fs in transfer_filters(settings)}  # the client process restarts
    moved = {k: v + 1e-2 for k, v in glob.items()}
    wire, received = fed.download("A", moved, 1)
    assert wire.data_kind == DataKind.APP_DEFINED  # the delta applies to the copy read back from the run folder
    update = _tensors(72, 1e-2)
    wire, _ = fed.upload("A", {k: v + update[k] for k, v in received.data.items()}, 4, 1)
    sent = read_delta(wire.data, wire.meta[CODEC])
    new_error = fed.chains["A"][("clients", FilterType.TASK_RESULT)][0].residual
    for k in glob:  # the restored residual went into this update
        np.testing.assert_allclose(sent[k] + new_error[k], update[k] + residual[k], rtol=1e-4, atol=2e-6)

    # another job in the same run folder (the simulator reuses "simulate_job"): nothing is taken over
    fed.chains["A"] = {(side, kind): fs for side, kind, fs in transfer_filters(settings)}
    fed.download("A", glob, 0)
    wire, _ = fed.upload("A", {k: v + update[k] for k, v in glob.items()}, 4, 0)
    sent = read_delta(wire.data, wire.meta[CODEC])
    new_error = fed.chains["A"][("clients", FilterType.TASK_RESULT)][0].residual
    for k in glob:  # this update alone: round 0 does not take over the residual of a round >= 0
        np.testing.assert_allclose(sent[k] + new_error[k], update[k], rtol=1e-4, atol=2e-6)


def test_an_unchanged_global_model_goes_whole_and_the_next_delta_still_applies():
    fed = Federation(JobSettings("fedmsa", "prostate", TINY, compression="int8"), ["A"])
    glob = _tensors(60)
    fed.download("A", glob, 0)
    wire, received = fed.download("A", glob, 1)  # e.g. every result of round 0 rejected: no delta to send
    assert wire.data_kind == DataKind.WEIGHTS and all(np.array_equal(received.data[k], glob[k]) for k in glob)
    moved = {k: v + 1e-2 for k, v in glob.items()}
    wire, received = fed.download("A", moved, 2)
    assert wire.data_kind == DataKind.APP_DEFINED
    assert all(np.abs(received.data[k] - moved[k]).max() <= 1e-2 / 254 * 1.01 + 1e-6 for k in glob)


def test_partial_upload_without_int8_sends_fewer_float32_tensors():
    settings = JobSettings("fedmsa", "prostate", TINY, partial_upload_blocks=1)
    fed = Federation(settings, ["A"])
    glob = _tensors(40)
    assert fed.download("A", glob, 0)[0].data_kind == DataKind.WEIGHTS  # no download filters
    wire, result = fed.upload("A", glob, 5, 0)
    assert wire.data_kind == DataKind.WEIGHTS and set(wire.data) == set(upload_names(glob, 1)) != set(glob)
    assert all(np.array_equal(wire.data[k], glob[k]) for k in wire.data) and set(result.data) == set(wire.data)
    chains = {(side, kind): [type(f).__name__ for f in fs] for side, kind, fs in transfer_filters(settings)}
    assert chains == {("clients", FilterType.TASK_RESULT): ["SendUpdate"]}


def test_job_configs_chain_the_filters_in_order_and_check_options():
    configs = job_configs(JobSettings("fedmsa", "prostate", TINY, compression="int8", half_precision=True,
                                      topk_fraction=0.2, partial_upload_blocks=1), REPO / "bundles")

    def chain(side: str, key: str, of=None):
        (only,) = (of or configs)[side][key]
        assert set(only["tasks"]) == {"train", "validate"}
        return [f["path"].rsplit(".", 1)[1] for f in only["filters"]], only["filters"]

    assert chain("server", "task_data_filters")[0] == ["ToHalfPrecision", "SendGlobalModel"]
    assert chain("client", "task_data_filters")[0] == ["ReceiveGlobalModel", "ToFullPrecision"]
    names, filters = chain("client", "task_result_filters")
    assert names == ["SendUpdate", "ToHalfPrecision"]
    assert filters[0]["args"] == {"fraction": 0.2, "upload_blocks": 1}  # the Job API leaves out defaults (int8, channel)
    assert chain("server", "task_result_filters")[0] == ["ReceiveUpdate", "ToFullPrecision"]
    aggregator = next(c for c in configs["server"]["components"] if c["id"] == "aggregator")
    assert aggregator["args"]["upload_blocks"] == 1
    # differential privacy joins the site's chains on float32 models: the tap after decoding, the noise
    # on the update before it is compressed and halved
    with_dp = job_configs(JobSettings("fedmsa", "prostate", TINY, compression="int8", half_precision=True,
                                      dp_clip_norm=0.05), REPO / "bundles")
    assert chain("client", "task_data_filters", with_dp)[0] == ["ReceiveGlobalModel", "ToFullPrecision", "DPGlobalModelTap"]
    assert chain("client", "task_result_filters", with_dp)[0] == ["GaussianUpdateDP", "SendUpdate", "ToHalfPrecision"]
    download_only = job_configs(JobSettings("fedmsa", "prostate", TINY, compression="int8", compress_download=False),
                                REPO / "bundles")
    (server_data,) = download_only["server"]["task_data_filters"]
    assert server_data["filters"][0]["args"] == {"compression": "none"}

    for bad, message in ((dict(topk_fraction=0.2), "needs compression='int8'"), (dict(compression="int4"), "unknown compression"),
                         (dict(compression="int8", topk_fraction=1.0), r"\[0, 1\)"), (dict(partial_upload_blocks=2), r"\[0, 2\)"),
                         (dict(compression="int8", compression_scale="row"), "compression_scale")):
        with pytest.raises(ValueError, match=message):
            JobSettings("fedmsa", "prostate", TINY, **bad)
    with pytest.raises(ValueError, match="fedunet has none"):
        JobSettings("fedunet", "prostate", partial_upload_blocks=1)


# -- the aggregator under partial upload ----------------------------------------------------------
def test_partial_upload_aggregates_sent_tensors_by_n_k_and_keeps_the_rest_at_global_values(caplog):
    glob = _tensors(50)
    sent = upload_names(glob, 1)
    config = job_configs(JobSettings("fedmsa", "prostate", TINY, partial_upload_blocks=1), REPO / "bundles")["server"]
    spec = next(c for c in config["components"] if c["id"] == "aggregator")
    aggregator = instantiate_class(spec["path"], spec["args"])
    assert isinstance(aggregator, GuardedAggregator)
    fl_ctx = FLContext()
    aggregator.handle_event(EventType.START_RUN, fl_ctx)
    fl_ctx.set_prop(AppConstants.CURRENT_ROUND, 0, private=True, sticky=False)
    fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable(glob, {}), private=True, sticky=False)

    def result(site, weights, n):
        shareable = DXO(DataKind.WEIGHTS, weights, {MetaKey.NUM_STEPS_CURRENT_ROUND: n}).to_shareable()
        shareable.set_peer_props({ReservedKey.IDENTITY_NAME: site})
        shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
        return shareable

    uploads = {site: ({k: glob[k] + _tensors(51 + i, 1e-2)[k] for k in sent}, n) for i, (site, n) in enumerate((("A", 10), ("B", 30), ("C", 20)))}
    with caplog.at_level(logging.WARNING):
        for site, (weights, n) in uploads.items():
            assert aggregator.accept(result(site, weights, n), fl_ctx)
        assert not aggregator.accept(result("FULL", {k: v.copy() for k, v in glob.items()}, 5), fl_ctx)
    assert "result of FULL rejected: tensor names differ" in caplog.text
    aggregate = from_shareable(aggregator.aggregate(fl_ctx)).data
    assert set(aggregate) == set(glob)
    for k in glob:
        if k in sent:
            expected = sum(w[k].astype(np.float64) * n for w, n in uploads.values()) / 60
            np.testing.assert_allclose(aggregate[k], expected, rtol=1e-6, atol=1e-7)
        else:
            assert np.array_equal(aggregate[k], glob[k])


# -- simulator runs: every option audited on the wire ------------------------------------------------
def _audit(audit: Path, site: str, direction: str, task: str, index: int) -> tuple[dict, dict]:
    """(arrays, {"kind", "meta"}) of one recorded message (fedfms_audit.AuditFilter)."""
    stem = f"{site}.{direction}.{task}.{index}"
    with np.load(audit / f"{stem}.npz") as arrays:
        return {k: arrays[k] for k in arrays.files}, json.loads((audit / f"{stem}.json").read_text())


def _global(run) -> dict:
    import torch

    return {k: v.numpy() for k, v in torch.load(run.server / "app_server" / "FL_global_model.pt", weights_only=True)["model"].items()}


@pytest.mark.heavy  # 190 s on 2 cores: the fast suite keeps the filter chain tests above
def test_simulator_int8_top_k_partial_upload_on_the_wire_and_fedavg_of_the_decoded_updates(run_simulator, small_settings, small_sites):
    from fedfms.networks import MSASegmenter
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # two threads for three sites: the simulator re-creates clients between tasks, so the sites' copies of
    # the global model and their residuals must survive in their run folders
    run = run_simulator(small_settings("fedmsa", compression="int8", topk_fraction=0.3, partial_upload_blocks=1),
                        audit=True, threads=2)
    state = MSASegmenter(model_type="vit_tiny", image_size=64).state_dict()
    names = set(MSASegmenter(model_type="vit_tiny", image_size=64).transmitted_keys())
    sent, held = set(upload_names(names, 1)), names - set(upload_names(names, 1))
    assert held and all(".blocks.1." in n for n in held)
    sizes = {site.replace(".", "_"): n for site, n in small_sites.items()}

    glob = None
    for round_ in (0, 1):
        uploads = {}
        for site, n in sizes.items():
            down, down_record = _audit(run.audit, site, "in", "train", round_)
            if round_ == 0:  # the full float32 model, exactly the transmitted tensors
                assert down_record["kind"] == "WEIGHTS" and set(down) == names
                assert all(down[k].dtype == np.float32 and down[k].shape == tuple(state[k].shape) for k in names)
                glob = glob or {k: v.astype(np.float64) for k, v in down.items()}
            else:  # an int8 delta of what changed: nothing of the held-back tensors
                layout = down_record["meta"][CODEC]
                assert down_record["kind"] == "APP_DEFINED" and payload_names(down) <= sent
                assert {str(v.dtype) for v in down.values()} == {"int8", "float32", "uint8"}
                assert all(tuple(layout["shapes"][k]) == tuple(state[k].shape) for k in layout["shapes"])
            up, up_record = _audit(run.audit, site, "out", "train", round_)
            layout = up_record["meta"][CODEC]
            assert up_record["kind"] == "APP_DEFINED" and payload_names(up) == sent and layout["fraction"] == 0.3
            assert {str(v.dtype) for v in up.values()} == {"int8", "float32", "uint8"}
            assert {k: tuple(s) for k, s in layout["shapes"].items()} == {k: tuple(state[k].shape) for k in sent}
            assert up_record["meta"]["NUM_STEPS_CURRENT_ROUND"] == n
            uploads[site] = read_delta(up, layout)
            traffic = run.rounds[round_]["traffic"][site]
            assert abs(traffic["bytes_up"] - up_record["meta"]["bytes_sent"]) < 100  # server-measured = site-reported
        # FedAvg of (global model + decoded update), weighted by n_k, on the sent tensors; the rest stays
        total = sum(sizes.values())
        glob = {k: v + sum(uploads[s][k] * n for s, n in sizes.items()) / total if k in sent else v for k, v in glob.items()}
    final = _global(run)
    for k in names:
        if k in held:
            assert np.array_equal(final[k], glob[k].astype(np.float32)), k
        else:
            np.testing.assert_allclose(final[k], glob[k], rtol=1e-5, atol=1e-6)

    # cross-site evaluation gets whole float32 models
    for site in sizes:
        model, record = _audit(run.audit, site, "in", "validate", 0)
        assert record["kind"] == "WEIGHTS" and set(model) == names and {v.dtype for v in model.values()} == {np.dtype(np.float32)}

    # bytes each way per site and round: report, log, TensorBoard
    full = sum(v.nbytes for v in _audit(run.audit, "HK", "in", "train", 0)[0].values())
    for round_, entry in enumerate(run.rounds):
        for site, traffic in entry["traffic"].items():
            assert (full < traffic["bytes_down"] < full * 1.01) if round_ == 0 else traffic["bytes_down"] < full / 4
            assert traffic["bytes_up"] < full / 4
    assert "round 1: HK: loss" in run.log and " up " in run.log and " down " in run.log
    assert f"sending {len(sent)} of {len(names)} tensors as int8 per channel, top-0.3" in run.log  # the site log
    assert "received the global model as int8 delta (0.3)" in run.log
    streams = [EventAccumulator(str(folder)).Reload() for folder in (run.server / "tb_events").iterdir()]
    (server,) = [e for e in streams if "bytes_up/HK" in e.Tags()["scalars"]]
    assert {f"bytes_{d}/{s}" for d in ("up", "down") for s in sizes} <= set(server.Tags()["scalars"])
    assert [(e.step, e.value) for e in server.Scalars("bytes_up/HK")] == [
        (r, pytest.approx(run.rounds[r]["traffic"]["HK"]["bytes_up"], rel=1e-6)) for r in (0, 1)]


@pytest.mark.heavy
def test_simulator_int8_per_tensor_with_float16_download(run_simulator, small_settings, small_sites):
    """int8 per-tensor scales up, the global model whole but float16 down (compress_download off)."""
    run = run_simulator(small_settings("fedmsa", compression="int8", compression_scale="tensor", half_precision=True,
                                       compress_download=False), audit=True)
    sizes = {site.replace(".", "_"): n for site, n in small_sites.items()}
    uploads = {}
    for site in sizes:
        for round_ in (0, 1):
            down, record = _audit(run.audit, site, "in", "train", round_)
            assert record["kind"] == "WEIGHTS" and {v.dtype for v in down.values()} == {np.dtype(np.float16)}
            up, record = _audit(run.audit, site, "out", "train", round_)
            assert record["kind"] == "APP_DEFINED" and payload_names(up) == set(down)
            assert all(up[k + ":scale"].shape == () for k in down) and {str(v.dtype) for v in up.values()} == {"int8", "float32"}
            uploads[site, round_] = read_delta(up, record["meta"][CODEC])
    # the last round: final model = the model of round 1 (sites saw it rounded to float16) + n_k-weighted mean update
    start = {k: v.astype(np.float64) for k, v in _audit(run.audit, "HK", "in", "train", 1)[0].items()}
    final, total = _global(run), sum(sizes.values())
    for k, v in start.items():
        mean_update = sum(uploads[s, 1][k] * n for s, n in sizes.items()) / total
        np.testing.assert_allclose(final[k] - mean_update, v, rtol=2.0 ** -10, atol=1e-6)
    assert all(entry["traffic"][s]["bytes_up"] < entry["traffic"][s]["bytes_down"] / 1.9 for entry in run.rounds for s in sizes)


@pytest.mark.heavy
def test_simulator_partial_upload_alone_with_float16(run_simulator, small_settings, small_sites):
    """Partial upload without int8: float16 WEIGHTS of the first block, decoder and head; the rest stays."""
    run = run_simulator(small_settings("fedmsa", partial_upload_blocks=1, half_precision=True), audit=True)
    sizes = {site.replace(".", "_"): n for site, n in small_sites.items()}
    first = _audit(run.audit, "HK", "in", "train", 0)[0]
    sent = set(upload_names(first, 1))
    uploads = {}
    for site in sizes:
        for round_ in (0, 1):
            down, record = _audit(run.audit, site, "in", "train", round_)
            assert record["kind"] == "WEIGHTS" and set(down) == set(first)  # the whole transmitted state comes back
            up, record = _audit(run.audit, site, "out", "train", round_)
            assert record["kind"] == "WEIGHTS" and set(up) == sent and {v.dtype for v in up.values()} == {np.dtype(np.float16)}
            uploads[site, round_] = up
    final, total = _global(run), sum(sizes.values())
    last = _audit(run.audit, "HK", "in", "train", 1)[0]
    for k in first:
        if k in sent:  # n_k-weighted mean of the float16 uploads
            expected = sum(uploads[s, 1][k].astype(np.float64) * n for s, n in sizes.items()) / total
            np.testing.assert_allclose(final[k], expected, rtol=1e-5, atol=1e-7)
        else:  # never uploaded: the global value, unchanged over the rounds
            assert np.array_equal(first[k], last[k]) and np.array_equal(final[k].astype(np.float16), first[k])

"""The site's result policy (fedfms.runtime.privacy): allow-list, drop and reject modes, size caps,
dtypes, data kinds, meta and header policing, the after-filters guard, the shipped scopes against the
networks' transmitted tensors, privacy.json as NVFlare reads it, and the scope every job declares."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FilterKey, FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable, make_reply

from fedfms.core.wire import BYTES_SENT, TRAIN_LOSS
from fedfms.networks import MSASegmenter, SAMSegmenter, transmitted_keys
from fedfms.orchestration.jobs import JobSettings, job_configs
from fedfms.registry import get_method, method_names
from fedfms.runtime.privacy import (
    EXAMPLE_SCOPES, GUARD_ID, SCOPE_NAMES, WITHHELD, ResultPolicy, ResultPolicyGuard, check_patterns,
    derive_patterns, example_scopes, write_site_privacy,
)

REPO = Path(__file__).resolve().parents[2]
ENCODER_WEIGHT = "image_encoder.patch_embed.proj.weight"  # frozen in FedMSA: must never leave


@pytest.fixture(scope="module")
def msa() -> MSASegmenter:
    return MSASegmenter(model_type="vit_tiny", image_size=64)


@pytest.fixture(scope="module")
def sent(msa) -> dict:
    """The tensors a FedMSA site sends, as numpy arrays (what the executor puts in its DXO)."""
    state = msa.state_dict()
    return {name: state[name].numpy() for name in transmitted_keys(msa)}


def _policy(scope: str, **changes) -> ResultPolicy:
    return ResultPolicy(**{**EXAMPLE_SCOPES[scope], **changes})


def _train_result(tensors: dict, **meta) -> Shareable:
    """A train result as BundleExecutor builds it (DXO of WEIGHTS, its meta keys)."""
    meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: 6, MetaKey.INITIAL_METRICS: {"val_dice": 0.5, "val_iou": 0.4},
            TRAIN_LOSS: 0.7, BYTES_SENT: 1234, **meta}
    return DXO(DataKind.WEIGHTS, dict(tensors), meta).to_shareable()


def _data(result: Shareable) -> dict:
    return from_shareable(result).data


def _withheld(result: Shareable) -> bool:
    return result.get_return_code() == WITHHELD and set(result) == {ReservedHeaderKey.HEADERS}


# -- allow-list, modes --------------------------------------------------------------------------
def test_fedmsa_scope_drops_an_encoder_weight_and_keeps_the_transmitted_tensors(msa, sent, caplog):
    leaky = {**sent, ENCODER_WEIGHT: msa.state_dict()[ENCODER_WEIGHT].numpy()}
    out = _policy("fedmsa", mode="drop").process(_train_result(leaky), FLContext())
    assert set(_data(out)) == set(transmitted_keys(msa))  # exactly what the network transmits
    assert from_shareable(out).meta[TRAIN_LOSS] == 0.7
    assert f"tensor '{ENCODER_WEIGHT}': float32, shape (64, 3, 16, 16): name not allowed by the scope" in caplog.text


def test_reject_mode_withholds_the_whole_result(msa, sent, caplog):
    leaky = {**sent, ENCODER_WEIGHT: msa.state_dict()[ENCODER_WEIGHT].numpy()}
    out = _policy("fedmsa", mode="reject").process(_train_result(leaky), FLContext())
    assert _withheld(out)
    assert "withheld the result: tensor 'image_encoder.patch_embed.proj.weight'" in caplog.text


def test_a_clean_result_passes_unchanged(sent):
    result = _train_result(sent)
    for mode in ("drop", "reject"):
        out = _policy("fedmsa", mode=mode).process(result, FLContext())
        assert out is result and set(_data(out)) == set(sent)


@pytest.mark.parametrize("num_classes", [1, 2])
def test_shipped_fedmsa_patterns_let_out_every_transmitted_tensor_and_no_encoder_weight(num_classes):
    network = MSASegmenter(model_type="vit_tiny", image_size=64, num_classes=num_classes)
    check = check_patterns(EXAMPLE_SCOPES["fedmsa"]["allow"], network)
    assert check.blocked == ()
    # the patterns are coarser than the transmitted set only inside the mask decoder (its IoU head
    # and, for binary tasks, unused hypernetworks: SAM's own weights, never an encoder weight)
    assert check.extra and all(name.startswith("mask_decoder.") for name in check.extra)
    # the full SAM model's transmitted set is all let out by full_model
    assert check_patterns(EXAMPLE_SCOPES["full_model"]["allow"], SAMSegmenter(model_type="vit_tiny", image_size=64)).blocked == ()


@pytest.mark.parametrize("build", [lambda: MSASegmenter(model_type="vit_tiny", image_size=64),
                                   lambda: MSASegmenter(model_type="vit_tiny", image_size=64, num_classes=2),
                                   lambda: SAMSegmenter(model_type="vit_tiny", image_size=64)])
def test_derived_patterns_let_out_exactly_the_transmitted_tensors(build):
    network = build()
    patterns = derive_patterns(network)
    check = check_patterns(patterns, network)
    assert check.blocked == () and check.extra == ()
    assert len(patterns) <= 12, patterns  # readable: block indices generalised
    if isinstance(network, MSASegmenter):
        assert "image_encoder.blocks.*.space_adapter.*" in patterns


# -- size caps and dtypes -------------------------------------------------------------------------
def test_result_size_cap_withholds_even_in_drop_mode(sent):
    total = sum(v.nbytes for v in sent.values())
    assert _withheld(_policy("fedmsa", max_result_bytes=total - 1).process(_train_result(sent), FLContext()))
    assert set(_data(_policy("fedmsa", max_result_bytes=total).process(_train_result(sent), FLContext()))) == set(sent)


def test_size_cap_counts_what_remains_after_dropping(sent):
    total = sum(v.nbytes for v in sent.values())
    huge = {**sent, "activations": np.zeros((64, 256, 16, 16), np.float32)}  # not allowed: dropped, not counted
    out = _policy("fedmsa", max_result_bytes=total).process(_train_result(huge), FLContext())
    assert set(_data(out)) == set(sent)


def test_tensor_element_limit():
    tensors = {"mask_decoder.a": np.zeros(10, np.float32), "mask_decoder.b": np.zeros(11, np.float32)}
    out = _policy("fedmsa", max_tensor_elements=10).process(_train_result(tensors), FLContext())
    assert set(_data(out)) == {"mask_decoder.a"}


def test_dtypes_float16_passes_others_only_when_the_scope_allows_them():
    tensors = {"mask_decoder.f32": np.zeros(3, np.float32), "mask_decoder.f16": np.zeros(3, np.float16),
               "mask_decoder.f64": np.zeros(3, np.float64), "mask_decoder.q": np.zeros(3, np.int8),
               "mask_decoder.list": [0.0, 1.0], "mask_decoder.obj": np.array([{}], dtype=object)}
    out = _policy("fedmsa").process(_train_result(tensors), FLContext())
    assert set(_data(out)) == {"mask_decoder.f32", "mask_decoder.f16"}
    # a scope that takes int8-compressed updates lists int8
    out = _policy("fedmsa", dtypes=["float32", "float16", "int8"]).process(_train_result(tensors), FLContext())
    assert set(_data(out)) == {"mask_decoder.f32", "mask_decoder.f16", "mask_decoder.q"}
    with pytest.raises(TypeError):
        ResultPolicy(dtypes=["float23"])


def test_full_model_scope_lets_out_a_unet_state_with_its_int64_counters_only():
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "unet" / "configs" / "train.json"))
    unet = parser.get_parsed_content("network_def")
    state = {k: v.numpy() for k, v in unet.state_dict().items()}
    assert any(v.dtype == np.int64 for v in state.values())  # BatchNorm num_batches_tracked
    smuggled = {**state, "labels": np.zeros((4, 64, 64), np.int64)}
    out = _policy("full_model").process(_train_result(smuggled), FLContext())
    assert set(_data(out)) == set(state)


# -- data kinds -----------------------------------------------------------------------------------
def test_data_kinds_other_than_allowed_are_withheld(sent):
    collection = DXO(DataKind.COLLECTION, {"a": DXO(DataKind.WEIGHTS, dict(sent))}).to_shareable()
    app = DXO(DataKind.APP_DEFINED, {"image": np.zeros((64, 64), np.float32)}).to_shareable()
    for result in (collection, app):
        assert _withheld(_policy("full_model").process(result, FLContext()))
    weights = _train_result(sent)
    assert _withheld(_policy("metrics_only").process(weights, FLContext()))
    with pytest.raises(ValueError):
        ResultPolicy(data_kinds=["COLLECTION"])


def test_metrics_only_aggregate_scalars_pass_per_sample_vectors_do_not():
    metrics = {"test_dice": 0.61, "val_iou": np.float32(0.5), "per_class_dice": [0.7, 0.6],
               "per_sample_dice": np.linspace(0, 1, 40), "note": "text"}
    out = _policy("metrics_only").process(DXO(DataKind.METRICS, dict(metrics)).to_shareable(), FLContext())
    assert set(_data(out)) == {"test_dice", "val_iou"}
    out = _policy("metrics_only", max_metric_values=2).process(DXO(DataKind.METRICS, dict(metrics)).to_shareable(), FLContext())
    assert set(_data(out)) == {"test_dice", "val_iou", "per_class_dice"}


# -- meta, headers, content -----------------------------------------------------------------------
def test_meta_only_known_keys_with_plain_values(sent):
    result = _train_result(sent, **{"activations": np.zeros(4), "comment": "x" * 300,
                                    MetaKey.FILTER_HISTORY: ["ToHalfPrecision"]})
    dxo = from_shareable(result)
    dxo.meta[TRAIN_LOSS] = np.zeros(10)  # a known key with an array value
    dxo.meta[MetaKey.INITIAL_METRICS] = {f"sample_{i}": 0.5 for i in range(100)}  # per-sample metrics
    out = _policy("fedmsa").process(dxo.update_shareable(result), FLContext())
    assert set(from_shareable(out).meta) == {MetaKey.NUM_STEPS_CURRENT_ROUND, BYTES_SENT, MetaKey.FILTER_HISTORY}


def test_headers_and_extra_content_are_policed(sent):
    result = _train_result(sent)
    result.set_header("round", 3)
    result.set_header("smuggled", np.zeros((8, 8), np.float32))
    result["extra"] = {"image": np.zeros((8, 8))}
    out = _policy("fedmsa").process(result, FLContext())
    assert set(out) == {ReservedHeaderKey.HEADERS, "DXO"}
    assert set(out[ReservedHeaderKey.HEADERS]) == {ReservedHeaderKey.CONTENT_TYPE, "round"}
    assert set(_data(out)) == set(sent)


def test_an_error_reply_passes_without_content(sent):
    reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
    assert _policy("fedmsa").process(reply, FLContext()) is reply
    leaky = make_reply(ReturnCode.EXECUTION_EXCEPTION)
    leaky["DXO"] = DXO(DataKind.WEIGHTS, dict(sent)).to_dict()
    out = _policy("fedmsa").process(leaky, FLContext())
    assert set(out) == {ReservedHeaderKey.HEADERS} and out.get_return_code() == ReturnCode.EXECUTION_EXCEPTION


def test_bad_arguments_are_refused():
    for kwargs in ({"mode": "strip"}, {"allow": ["", "x"]}, {"max_result_bytes": -1}, {"max_metric_values": 0}):
        with pytest.raises(ValueError):
            ResultPolicy(**kwargs)


# -- the guard after the job's filters --------------------------------------------------------------
def _scope_context(policy: ResultPolicy, result: Shareable) -> FLContext:
    from nvflare.private.privacy_manager import Scope  # what NVFlare puts under SCOPE_OBJECT

    scope = Scope()
    scope.set_name("fedmsa")
    scope.add_task_result_filter(policy, FilterKey.OUT)
    fl_ctx = FLContext()
    fl_ctx.set_prop(FLContextKey.SCOPE_OBJECT, scope, private=True, sticky=False)
    fl_ctx.set_prop(FLContextKey.TASK_RESULT, result, private=True, sticky=False)
    return fl_ctx


def test_guard_withholds_in_place_what_a_job_filter_added_after_the_site_filter(sent, caplog):
    policy = _policy("fedmsa", mode="drop")
    result = policy.process(_train_result(sent), FLContext())  # the site's filter: clean
    result = DXO(DataKind.WEIGHTS, {**_data(result), ENCODER_WEIGHT: np.zeros((64, 3, 16, 16), np.float32)}).update_shareable(result)
    ResultPolicyGuard().handle_event(EventType.AFTER_TASK_RESULT_FILTER, _scope_context(policy, result))
    assert _withheld(result)  # the same object, emptied
    assert f"after the job's filters: withheld the result: tensor '{ENCODER_WEIGHT}'" in caplog.text


def test_guard_leaves_a_clean_result_alone(sent):
    result = _train_result(sent)
    ResultPolicyGuard().handle_event(EventType.AFTER_TASK_RESULT_FILTER, _scope_context(_policy("fedmsa"), result))
    assert set(_data(result)) == set(sent)


# -- library internals the privacy pieces rely on (fail loudly when NVFlare changes) ----------------
def test_nvflare_runs_the_site_scope_result_filters_before_the_jobs():
    """Why the guard exists: in NVFlare 2.9 a scope's result filters come first, the job's after them."""
    from nvflare.apis.utils.task_utils import get_filters
    from nvflare.private.privacy_manager import Scope

    site, job = ResultPolicy(), ResultPolicy()
    scope = Scope()
    scope.add_task_result_filter(site, FilterKey.OUT)
    fl_ctx = FLContext()
    fl_ctx.set_prop(FLContextKey.SCOPE_OBJECT, scope, private=True, sticky=False)
    chain = get_filters(Scope.TASK_RESULT_FILTERS_NAME, fl_ctx, {"train" + FilterKey.DELIMITER + FilterKey.OUT: [job]},
                        "train", FilterKey.OUT)
    assert chain == [site, job]


def test_privacy_json_as_nvflare_reads_it(tmp_path):
    from nvflare.apis.workspace import Workspace
    from nvflare.private.fed.app.fl_conf import create_privacy_manager

    local = tmp_path / "site" / "local"
    local.mkdir(parents=True)
    (tmp_path / "site" / "startup").mkdir()  # a workspace NVFlare accepts
    (local / "privacy.json").write_text(json.dumps({"scopes": [{"name": "public", "task_result_filters": []}],
                                                    "default_scope": "public"}))
    write_site_privacy(local, mode="reject")
    write_site_privacy(local, mode="reject")  # idempotent: no duplicate scope or component
    manager = create_privacy_manager(Workspace(str(tmp_path / "site"), "HK"), names_only=False)
    assert set(manager.name_to_scopes) == {"public", *SCOPE_NAMES} and manager.default_scope.name == "public"
    (policy,) = manager.get_scope("fedmsa").task_result_filters[FilterKey.OUT]
    assert isinstance(policy, ResultPolicy) and policy.mode == "reject" and policy.allow == tuple(EXAMPLE_SCOPES["fedmsa"]["allow"])
    assert manager.get_scope("metrics_only").task_result_filters[FilterKey.OUT][0].data_kinds == ("METRICS",)
    assert isinstance(manager.components[GUARD_ID], ResultPolicyGuard)
    with pytest.raises(ValueError):
        write_site_privacy(local, default_scope="nonexistent")
    with pytest.raises(ValueError):
        example_scopes(mode="strip")


# -- the scope every job declares -----------------------------------------------------------------
def test_every_job_declares_its_methods_shipped_scope():
    expected = {"fedmsa": "fedmsa", "fedsam": "full_model", "fedunet": "full_model", "fednnunet": "fednnunet"}
    assert set(method_names(federated=True)) == set(expected)
    for method, scope in expected.items():
        assert get_method(method).privacy_scope == scope
        meta = json.loads((REPO / "jobs" / f"{method}_prostate" / "meta.json").read_text())
        assert meta["scope"] == scope
    meta = job_configs(JobSettings("fedmsa", "prostate", held_out=("UCL",)), REPO / "bundles")["meta"]
    assert meta["scope"] == "fedmsa"


def test_readme_shows_the_privacy_json_the_helper_writes(tmp_path):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### What leaves a site, and who decides"):]
    block = section[section.index("```json") + len("```json"):]
    block = block[:block.index("```")]
    assert json.loads(block) == json.loads(write_site_privacy(tmp_path).read_text())


def test_site_privacy_cli_writes_and_checks(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("site_privacy", REPO / "tools" / "site_privacy.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["write", str(tmp_path), "--mode", "reject", "--default-scope", "metrics_only"]) == 0
    config = json.loads((tmp_path / "privacy.json").read_text())
    assert config["default_scope"] == "metrics_only"
    check = ["check", "--method", "fedmsa", "--model-type", "vit_tiny", "--privacy", str(tmp_path / "privacy.json")]
    assert cli.main(check) == 0
    # a site that narrows fedmsa to the decoder would block the adapters: the check says so and fails
    config["scopes"][0]["task_result_filters"][0]["args"]["allow"] = ["mask_decoder.*"]
    (tmp_path / "privacy.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert cli.main(check) == 1
    assert "BLOCKED transmitted tensors" in capsys.readouterr().out

"""FednnU-Net as an NVFlare job (the real generator, synthetic demo sites).

Fast: the job's own components in one process, as NVFlare drives them (the sites' PlannedBundleExecutor
from the generated client config, the server's planning functions, GuardedAggregator): fingerprints ->
plan -> one FedAvg round of the planned network, with every message audited (keys, names, shapes,
dtypes), a site whose fingerprint fails, and too few fingerprints as an error before training.
Heavy: the same in NVFlare's simulator (the planning workflow, the wire as the filters see it,
cross-site evaluation, a job stopped before training), several minutes on a busy 2-core machine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.apis.workspace import Workspace
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.fuel.utils.class_utils import instantiate_class

from fedfms.core.wire import BYTES_SENT, ERROR_MESSAGE, FINGERPRINT_KEY, FINGERPRINT_TASK, PLAN_KEY, PLAN_TASK, TRAIN_LOSS
from fedfms.nnunet import (
    FingerprintError, PlanningError, build_network, check_fingerprint, check_plan, make_plan, merge_fingerprints,
    site_fingerprint,
)
from fedfms.orchestration.jobs import JobSettings, write_job
from fedfms.runtime.site_config import SITE_CONFIG_FILE
from fedfms.registry import Profile, get_method
from fedfms.runtime.nnunet_planning import plan_from_fingerprints, plan_task_data, received_fingerprint, usable_fingerprints
from fedfms.runtime.privacy import EXAMPLE_SCOPES, WITHHELD, ResultPolicy

#: one round at 64 px (a 5-stage 2d nnU-Net), batch 2, no augmentation workers: seconds per site on a CPU
PROFILE = Profile("small_nnunet", image_size=64, rounds=1, batch_size=2, num_workers=0)
#: DXO payload entries of a shareable (everything but NVFlare's headers)
DXO_PAYLOAD = sorted(k for k in DXO(DataKind.COLLECTION, {"x": 1}).to_shareable() if k != ReservedHeaderKey.HEADERS)


def _sites(demo_data: Path, root: Path, sizes: dict) -> Path:
    """root/prostate/<site>/datalist.json with (training, validation, test) samples of the demo sites;
    training samples are every third slice, so some hold the gland. Sample folders are symlinked."""
    for site, (n_train, n_val, n_test) in sizes.items():
        source, target = demo_data / "prostate" / site, root / "prostate" / site
        target.mkdir(parents=True)
        for folder in ("images", "labels"):
            (target / folder).symlink_to(source / folder, target_is_directory=True)
        content = json.loads((source / "datalist.json").read_text())
        content["training"] = content["training"][::3][:n_train]
        content["validation"], content["test"] = content["validation"][:n_val], content["test"][:n_test]
        (target / "datalist.json").write_text(json.dumps(content))
    return root


def _records(audit: Path, site: str, direction: str, task: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(audit.glob(f"{site}.{direction}.{task}.*.json"))]


def _tensors(audit: Path, site: str, direction: str, task: str) -> list[dict]:
    out = []
    for path in sorted(audit.glob(f"{site}.{direction}.{task}.*.npz")):
        with np.load(path) as arrays:
            out.append({k: arrays[k] for k in arrays.files})
    return out


REPO = Path(__file__).resolve().parents[2]
#: the in-process round: a 32 px frame (a 4-stage 2d nnU-Net), batch 2, one validation sample per site
TINY = Profile("tiny_nnunet", image_size=32, rounds=1, batch_size=2, num_workers=0)


class _SiteEngine:
    """What a site's executor asks NVFlare's client engine for: its workspace (no analytics receiver)."""

    def __init__(self, root: Path, site: str):
        for folder in ("startup", "local"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        self.workspace = Workspace(str(root), site)

    def get_workspace(self) -> Workspace:
        return self.workspace

    def get_component(self, component_id: str) -> Optional[object]:
        return None


def _site_context(job: Path, workspace: Path, site: str, data_root: Path) -> FLContext:
    """The FLContext NVFlare gives a site's executor: engine, identity, job id, app root."""
    engine = _SiteEngine(workspace / site, site)
    (workspace / site / "local" / SITE_CONFIG_FILE).write_text(json.dumps({"data_root": str(data_root), "device": "cpu"}))
    fl_ctx = FLContext()
    for key, value in ((ReservedKey.ENGINE, engine), (ReservedKey.IDENTITY_NAME, site), (ReservedKey.RUN_NUM, "job"),
                       (FLContextKey.APP_ROOT, str(job / "app"))):
        fl_ctx.set_prop(key, value, private=True, sticky=False)
    return fl_ctx


def _payload(shareable: Shareable) -> list[str]:
    return sorted(k for k in shareable if k != ReservedHeaderKey.HEADERS)


def test_planning_and_one_fedavg_round_with_the_jobs_own_components(demo_data, tmp_path):
    """Fingerprints -> server plan -> plan to every site -> one train round -> n_k-weighted FedAvg, through
    the generated job's executor and aggregator; every message checked for exactly what it carries."""
    root = _sites(demo_data, tmp_path / "data", {"HK": (3, 1, 1), "ISBI1.5": (2, 1, 1), "BIDMC": (0, 1, 1)})
    settings = JobSettings("fednnunet", "prostate", TINY, sites=("HK", "ISBI1.5", "BIDMC"), min_clients=2)
    job = write_job(settings, tmp_path / "jobs", REPO / "bundles")
    client = json.loads((job / "app" / "config" / "config_fed_client.json").read_text())["executors"][0]
    assert FINGERPRINT_TASK in client["tasks"] and PLAN_TASK in client["tasks"]
    sites = {"HK": "HK", "ISBI1_5": "ISBI1.5", "BIDMC": "BIDMC"}  # client name -> site folder
    executors, contexts = {}, {}
    for name in sites:
        executors[name] = instantiate_class(client["executor"]["path"], client["executor"]["args"])
        contexts[name] = _site_context(job, tmp_path / "workspace", name, root)
        executors[name].handle_event(EventType.START_RUN, contexts[name])

    def run(name: str, task: str, data: Shareable) -> Shareable:
        return executors[name].execute(task, data, contexts[name], Signal())

    # 1. Fingerprint task: a training site sends one DXO of COLLECTION holding exactly its fingerprint
    # (aggregate numbers only: the audit passes), equal to the fingerprint computed here from its datalist.
    results = {name: run(name, FINGERPRINT_TASK, Shareable()) for name in sites}
    expected = {name: site_fingerprint(root / "prostate" / sites[name] / "datalist.json", image_size=32, progress=False)
                for name in ("HK", "ISBI1_5")}
    for name in ("HK", "ISBI1_5"):
        result = results[name]
        assert result.get_return_code(ReturnCode.OK) == ReturnCode.OK and _payload(result) == DXO_PAYLOAD
        dxo = from_shareable(result)
        assert dxo.data_kind == DataKind.COLLECTION and list(dxo.data) == [FINGERPRINT_KEY] and dxo.meta == {}
        check_fingerprint(json.loads(json.dumps(dxo.data[FINGERPRINT_KEY])))  # plain JSON, aggregates only
        assert dxo.data[FINGERPRINT_KEY] == expected[name]
    failed = results["BIDMC"]  # empty training split: an error naming the site and its datalist, no content
    assert failed.get_return_code() == ReturnCode.EXECUTION_EXCEPTION and _payload(failed) == []
    message = failed.get_header(ERROR_MESSAGE)
    assert message.startswith("site BIDMC: ") and str(root / "prostate" / "BIDMC" / "datalist.json") in message
    assert "is empty" in message

    # 2. Server: the audited fingerprints, BIDMC left out with its reason, one plan from the merged
    # fingerprints (equal to nnU-Net's planner on the two sites' own fingerprints merged here).
    fingerprints, why = usable_fingerprints(results, image_size=32)
    assert sorted(fingerprints) == ["HK", "ISBI1_5"] and list(why) == ["BIDMC"] and message in why["BIDMC"]
    plan = plan_from_fingerprints(fingerprints, why, min_clients=2, gpu_memory_target_gb=8)
    assert plan == make_plan(merge_fingerprints([expected["HK"], expected["ISBI1_5"]]))
    assert plan["sites"] == {"HK": 3, "ISBI1.5": 2} and plan["image_size"] == 32
    # too few fingerprints: a clear error before training, naming every failed site and why
    with pytest.raises(PlanningError, match=r"1 of 3 training sites sent a usable fingerprint, 2 needed\. Failed: "
                                            r"BIDMC: failed \(EXECUTION_EXCEPTION\): site BIDMC: .*; ISBI1_5: no result"):
        plan_from_fingerprints({"HK": fingerprints["HK"]}, {**why, "ISBI1_5": "no result (timed out or disconnected)"},
                               min_clients=2, gpu_memory_target_gb=8)

    # 3. Plan task: exactly the plan goes out; every site accepts it with a bare acknowledgement. Before
    # it, a train task is refused (the site would otherwise train a network of its own).
    refused = run("HK", AppConstants.TASK_TRAIN, Shareable())
    assert refused.get_return_code() == ReturnCode.EXECUTION_EXCEPTION and "no nnU-Net plan" in refused.get_header(ERROR_MESSAGE)
    data = plan_task_data(plan)
    assert _payload(data) == DXO_PAYLOAD and list(from_shareable(data).data) == [PLAN_KEY]
    assert json.loads(json.dumps(from_shareable(data).data[PLAN_KEY])) == plan
    for name in sites:
        reply = run(name, PLAN_TASK, data)
        assert reply.get_return_code(ReturnCode.OK) == ReturnCode.OK and _payload(reply) == []

    # 4. One round: the server's global model is the planned network; each training site returns the
    # whole state dict (same names, shapes, float32) with n_k and its scalars; the aggregator averages by n_k.
    state = {k: v.numpy() for k, v in build_network(plan).state_dict().items()}
    task = DXO(DataKind.WEIGHTS, dict(state)).to_shareable()
    task.set_header(AppConstants.CURRENT_ROUND, 0)
    sent = {}
    for name, n_k in (("HK", 3), ("ISBI1_5", 2)):
        result = run(name, AppConstants.TASK_TRAIN, task)
        assert result.get_return_code(ReturnCode.OK) == ReturnCode.OK and _payload(result) == DXO_PAYLOAD
        dxo = from_shareable(result)
        assert dxo.data_kind == DataKind.WEIGHTS and sorted(dxo.data) == sorted(state)
        assert all(dxo.data[k].shape == state[k].shape and dxo.data[k].dtype == np.float32 for k in state)
        assert sorted(dxo.meta) == sorted([MetaKey.NUM_STEPS_CURRENT_ROUND, MetaKey.INITIAL_METRICS, TRAIN_LOSS, BYTES_SENT])
        assert dxo.meta[MetaKey.NUM_STEPS_CURRENT_ROUND] == n_k
        assert any(not np.array_equal(dxo.data[k], state[k]) for k in state)  # it trained
        sent[name] = (dxo.data, n_k)
    server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    spec = next(c for c in server["components"] if c["id"] == "aggregator")
    aggregator = instantiate_class(spec["path"], spec["args"])
    fl_ctx = FLContext()
    aggregator.handle_event(EventType.START_RUN, fl_ctx)
    fl_ctx.set_prop(AppConstants.CURRENT_ROUND, 0, private=True, sticky=False)
    fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable(state, {}), private=True, sticky=False)
    for name, (weights, n_k) in sent.items():
        result = DXO(DataKind.WEIGHTS, weights, {MetaKey.NUM_STEPS_CURRENT_ROUND: n_k}).to_shareable()
        result.set_peer_props({ReservedKey.IDENTITY_NAME: name})
        result.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
        assert aggregator.accept(result, fl_ctx)
    glob = from_shareable(aggregator.aggregate(fl_ctx)).data
    for k in state:
        mean = (sent["HK"][0][k].astype(np.float64) * 3 + sent["ISBI1_5"][0][k].astype(np.float64) * 2) / 5
        np.testing.assert_allclose(glob[k], mean, rtol=1e-5, atol=1e-6)
    for executor in executors.values():
        executor.handle_event(EventType.END_RUN, FLContext())


@pytest.mark.heavy
def test_fednnunet_plans_from_merged_fingerprints_then_trains_the_planned_network(run_simulator, demo_data, tmp_path):
    # HK and ISBI1.5 train; BIDMC's training split is empty (its fingerprint fails, the job goes on with
    # min_clients 2); UCL is held out (evaluated only).
    root = _sites(demo_data, tmp_path / "data", {"HK": (6, 2, 3), "ISBI1.5": (4, 2, 3), "BIDMC": (0, 2, 3), "UCL": (0, 2, 3)})
    settings = JobSettings("fednnunet", "prostate", PROFILE, sites=("HK", "ISBI1.5", "BIDMC", "UCL"), held_out=("UCL",),
                           min_clients=2, wait_time_after_min_received=120)
    run = run_simulator(settings, audit=True, data=root, threads=4)  # one process per site
    audit = run.audit

    # 1. Fingerprints: the training sites send exactly their fingerprint (aggregate numbers only, the audit
    # check passes on the record as it crossed the wire); the held-out site is never asked.
    expected = {site: site_fingerprint(root / "prostate" / site / "datalist.json", image_size=64, progress=False)
                for site in ("HK", "ISBI1.5")}
    for client, site in (("HK", "HK"), ("ISBI1_5", "ISBI1.5")):
        (record,) = _records(audit, client, "out", "nnunet_fingerprint")
        assert record["kind"] == DataKind.COLLECTION and record["payload_keys"] == DXO_PAYLOAD
        assert list(record["data"]) == [FINGERPRINT_KEY] and record["meta"] == {}
        check_fingerprint(record["data"][FINGERPRINT_KEY])
        assert record["data"][FINGERPRINT_KEY] == expected[site]
        assert not list(audit.glob(f"{client}.out.nnunet_fingerprint.*.npz"))
    (failed,) = _records(audit, "BIDMC", "out", "nnunet_fingerprint")
    assert failed["return_code"] == ReturnCode.EXECUTION_EXCEPTION and failed["kind"] is None
    assert failed["error"].startswith("site BIDMC: ") and "training' split of" in failed["error"]
    assert str(root / "prostate" / "BIDMC" / "datalist.json") in failed["error"] and "is empty" in failed["error"]
    assert not _records(audit, "UCL", "out", "nnunet_fingerprint")
    assert "site BIDMC: no usable nnU-Net fingerprint: failed (EXECUTION_EXCEPTION): site BIDMC" in run.log
    assert "planning without BIDMC (2 of 3 sites, min_clients 2)" in run.log

    # 2. One plan, made on the server from the merged fingerprints (sites in client order), reaches every
    # site, held-out ones included, and is all the plan task carries; the server keeps it beside its models.
    plan = make_plan(merge_fingerprints([expected["HK"], expected["ISBI1.5"]]))
    assert plan["sites"] == {"HK": 6, "ISBI1.5": 4}
    for client in ("HK", "ISBI1_5", "BIDMC", "UCL"):
        (record,) = _records(audit, client, "in", "nnunet_plan")
        assert record["kind"] == DataKind.COLLECTION and record["payload_keys"] == DXO_PAYLOAD
        assert list(record["data"]) == ["plan"]
        check_plan(record["data"]["plan"])
        assert record["data"]["plan"] == plan
        (reply,) = _records(audit, client, "out", "nnunet_plan")
        assert reply["return_code"] == ReturnCode.OK and reply["kind"] is None and reply["payload_keys"] == []
    assert json.loads((run.server / "app_server" / "nnunet_plans.json").read_text()) == plan

    # 3. Training: one round; the planned network's whole state dict travels both ways, nothing else, and
    # the global model is the n_k-weighted mean of the two results (BIDMC fails and is tolerated).
    state = build_network(plan).state_dict()
    names = sorted(state)
    sent = {client: _tensors(audit, client, "out", "train") for client in ("HK", "ISBI1_5")}
    for client in ("HK", "ISBI1_5"):
        (result,) = sent[client]
        (received,) = _tensors(audit, client, "in", "train")
        for arrays in (result, received):
            assert sorted(arrays) == names
            assert all(arrays[k].shape == tuple(state[k].shape) for k in names)
    assert not _tensors(audit, "UCL", "out", "train") and not _records(audit, "UCL", "in", "train")
    n_k = {client: _records(audit, client, "out", "train")[0]["meta"]["NUM_STEPS_CURRENT_ROUND"] for client in sent}
    assert n_k == {"HK": 6, "ISBI1_5": 4}
    glob = torch.load(run.server / "app_server" / "FL_global_model.pt", weights_only=True)["model"]
    build_network(plan).load_state_dict(glob)  # strict: the saved global model is the planned network
    for name in names:
        if not np.issubdtype(sent["HK"][0][name].dtype, np.floating):
            continue  # counters (BatchNorm-free here, but any integer buffer) are not averaged meaningfully
        mean = (sent["HK"][0][name].astype(np.float64) * 6 + sent["ISBI1_5"][0][name].astype(np.float64) * 4) / 10
        np.testing.assert_allclose(glob[name].numpy(), mean, rtol=1e-5, atol=1e-6)
    assert [r["missing"] for r in run.rounds] == [["BIDMC"]]
    assert set(run.rounds[0]["sites"]) == {"HK", "ISBI1_5"}

    # 4. Cross-site evaluation of the planned network on every site, the held-out one included.
    results = json.loads((run.server / "cross_site_val" / "fedfms_results.json").read_text())
    assert set(results) == {"HK", "ISBI1_5", "BIDMC", "UCL"}


@pytest.mark.heavy
def test_too_few_fingerprints_stop_the_job_before_any_training(run_simulator, demo_data, tmp_path):
    # Three training sites, min_clients 2: BIDMC's training split is empty and one of ISBI1.5's training
    # samples is not a readable .npy file. Only HK can be fingerprinted.
    root = _sites(demo_data, tmp_path / "data", {"HK": (4, 1, 1), "ISBI1.5": (3, 1, 1), "BIDMC": (0, 1, 1)})
    site = root / "prostate" / "ISBI1.5"
    (site / "images").unlink()
    shutil.copytree(demo_data / "prostate" / "ISBI1.5" / "images", site / "images")
    content = json.loads((site / "datalist.json").read_text())
    broken = site / content["training"][1]["image"]
    broken.write_bytes(b"not a numpy file")
    settings = JobSettings("fednnunet", "prostate", PROFILE, sites=("HK", "ISBI1.5", "BIDMC"), wait_time_after_min_received=120)
    run = run_simulator(settings, audit=True, data=root, expect_success=False, threads=3)

    assert "nnU-Net planning failed before training: 1 of 3 training sites sent a usable fingerprint, 2 needed" in run.log
    panic = next(line for line in run.log.splitlines() if "nnU-Net planning failed before training" in line)
    assert "BIDMC: failed (EXECUTION_EXCEPTION): site BIDMC: " in panic and "is empty" in panic
    assert f"ISBI1_5: failed (EXECUTION_EXCEPTION): site ISBI1.5: sample {broken}" in panic
    # no plan was sent, no train task, no round, no global model
    records = sorted(".".join(p.name.split(".")[1:3]) for p in run.audit.glob("*.json"))
    assert records == ["in.nnunet_fingerprint"] * 3 + ["out.nnunet_fingerprint"] * 3
    assert not (run.server / "fedfms_rounds.json").exists()
    assert not (run.server / "app_server" / "FL_global_model.pt").exists()
    assert not (run.server / "app_server" / "nnunet_plans.json").exists()


def test_the_server_accepts_only_an_audited_fingerprint(site_fingerprint_64):
    fingerprint = site_fingerprint_64
    good = DXO(DataKind.COLLECTION, {FINGERPRINT_KEY: fingerprint}).to_shareable()
    assert received_fingerprint(good, "HK", 64) == fingerprint

    failed = make_reply(ReturnCode.EXECUTION_EXCEPTION)
    failed.set_header(ERROR_MESSAGE, "site HK: sample /data/HK/images/a.npy (label ...): cannot read")
    bad = {
        "failed \\(EXECUTION_EXCEPTION\\): site HK: sample /data/HK/images/a\\.npy": failed,
        "sent no DXO": make_reply(ReturnCode.OK),
        "expected COLLECTION with exactly \\['fingerprint'\\]": DXO(DataKind.WEIGHTS, {FINGERPRINT_KEY: fingerprint}).to_shareable(),
        "with keys \\['fingerprint', 'thumbnail'\\]": DXO(DataKind.COLLECTION, {FINGERPRINT_KEY: fingerprint,
                                                                             "thumbnail": [[0.0]]}).to_shareable(),
        "unknown \\['mean_image'\\]": DXO(DataKind.COLLECTION, {FINGERPRINT_KEY: {**fingerprint, "mean_image": [[0.5]]}}).to_shareable(),
        "fingerprint for image_size 64, the job trains at 128": good,
    }
    for message, result in bad.items():
        with pytest.raises(FingerprintError, match=message):
            received_fingerprint(result, "HK", 128 if "128" in message else 64)


def test_the_fednnunet_privacy_scope_lets_out_an_audited_fingerprint_and_nothing_else(site_fingerprint_64):
    """A site that enforces privacy scopes (fedfms.runtime.privacy) runs FednnU-Net under the scope its
    jobs declare: the fingerprint passes; any other COLLECTION, or a fingerprint with more in it, is withheld;
    other scopes withhold every COLLECTION, the fingerprint included."""
    assert get_method("fednnunet").privacy_scope == "fednnunet"
    policy = ResultPolicy(**EXAMPLE_SCOPES["fednnunet"])
    good = DXO(DataKind.COLLECTION, {FINGERPRINT_KEY: site_fingerprint_64}).to_shareable()
    out = policy.process(good, FLContext())
    assert out.get_return_code(ReturnCode.OK) == ReturnCode.OK
    assert from_shareable(out).data == {FINGERPRINT_KEY: site_fingerprint_64}
    bad = [DXO(DataKind.COLLECTION, {FINGERPRINT_KEY: site_fingerprint_64, "thumbnail": [[0.0]]}).to_shareable(),
           DXO(DataKind.COLLECTION, {FINGERPRINT_KEY: {**site_fingerprint_64, "mean_image": [[0.5]]}}).to_shareable(),
           DXO(DataKind.COLLECTION, {FINGERPRINT_KEY: site_fingerprint_64}, {"site_path": "/data/HK"}).to_shareable(),
           DXO(DataKind.COLLECTION, {"image": np.zeros((4, 4), np.float32)}).to_shareable()]
    for result in bad:
        assert policy.process(result, FLContext()).get_return_code() == WITHHELD
    for scope in ("full_model", "fedmsa", "metrics_only"):
        assert ResultPolicy(**EXAMPLE_SCOPES[scope]).process(good, FLContext()).get_return_code() == WITHHELD
    # the planned network's training results pass as under full_model
    weights = DXO(DataKind.WEIGHTS, {"encoder.stages.0.0.convs.0.conv.weight": np.zeros((4, 1, 3, 3), np.float32)},
                  {MetaKey.NUM_STEPS_CURRENT_ROUND: 6}).to_shareable()
    assert set(from_shareable(policy.process(weights, FLContext())).data) == {"encoder.stages.0.0.convs.0.conv.weight"}


@pytest.fixture
def site_fingerprint_64(demo_data, tmp_path) -> dict:
    root = _sites(demo_data, tmp_path / "data", {"HK": (3, 1, 1)})
    return site_fingerprint(root / "prostate" / "HK" / "datalist.json", image_size=64, progress=False)

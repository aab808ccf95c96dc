"""The server side of FednnU-Net's federated planning step: one plan for every site, before training.

``NnUNetPlanning`` is the job's first workflow (NVFlare runs a job's workflows in order, so the plan
exists before ScatterAndGather asks the persistor for the initial global model):

1. task "nnunet_fingerprint" to the training sites: each returns nnU-Net's dataset fingerprint of its
   training split (``fedfms.nnunet.site_fingerprint``: aggregate numbers only). Every result is audited
   with ``check_fingerprint`` (exact keys and types); a site that fails, times out or sends anything
   else is logged with its message and left out.
2. fewer fingerprints than ``min_clients``: the job stops (system panic naming the failed sites), no
   train task is ever sent. Otherwise the fingerprints are merged (``merge_fingerprints``, sites in
   client-name order, weighted by case counts) and nnU-Net's 2d experiment planner runs once
   (``make_plan``); a plan that cannot be made also stops the job before training.
3. the plan is saved as ``nnunet_plans.json`` in the server's app folder (beside FL_global_model.pt, where
   the bundle's evaluate workflow looks for it) and its path published in the FL context (``PLAN_PATH``)
   for ``PlannedModelPersistor``, which builds the global model from it.
4. task "nnunet_plan" to every site (held-out sites need the network for cross-site evaluation); the job
   stops if fewer than ``min_clients`` training sites accept it.

The fingerprint and the plan are the only things this step sends; train and validate carry the
network's tensors as in every fedfms job.
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from nvflare.apis.controller_spec import ClientTask, Task
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.impl.controller import Controller
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal

from fedfms.core.options import as_float, as_int
from fedfms.core.wire import (
    BUNDLE_IN_APP, ERROR_MESSAGE, FINGERPRINT_KEY, FINGERPRINT_TASK, PLAN_KEY, PLAN_TASK,
)
from fedfms.nnunet import (
    PLAN_FILENAME, FingerprintError, PlanningError, check_fingerprint, make_plan, merge_fingerprints, save_plan,
)

from .bundle_network import read_train_config
from .persistor import TransmittedModelPersistor

#: FL-context property (private, sticky): path of the plan the planning workflow saved
PLAN_PATH = "fedfms.nnunet_plan_path"


def bundle_setting(bundle_root: str, name: str) -> object:
    """A setting of the job's bundle (configs/train.json with the job's configs/job.json on top)."""
    return read_train_config(bundle_root).get_parsed_content(name)


def _kind(dxo: DXO) -> str:
    return getattr(dxo.data_kind, "value", dxo.data_kind)  # "WEIGHTS", not "DataKind.WEIGHTS"


def received_fingerprint(result: Shareable, site: str, image_size: int) -> dict:
    """The fingerprint in a site's result, or FingerprintError saying why there is none: the site failed
    (its message), the result is not exactly {"fingerprint": ...}, the fingerprint fails the audit
    (``check_fingerprint``) or was computed for another image size than the job's."""
    code = result.get_return_code(ReturnCode.OK)
    if code != ReturnCode.OK:
        raise FingerprintError(f"failed ({code}): {result.get_header(ERROR_MESSAGE) or 'no message, see the site log'}")
    try:
        dxo = from_shareable(result)
    except Exception as err:
        raise FingerprintError(f"sent no DXO: {err}") from err
    if dxo.data_kind != DataKind.COLLECTION or set(dxo.data) != {FINGERPRINT_KEY}:
        raise FingerprintError(f"sent {_kind(dxo)} with keys {sorted(dxo.data)}, expected {DataKind.COLLECTION.value} "
                               f"with exactly {[FINGERPRINT_KEY]}")
    fingerprint = dxo.data[FINGERPRINT_KEY]
    check_fingerprint(fingerprint, source=f"of site {site}")
    if fingerprint["image_size"] != image_size:
        raise FingerprintError(f"fingerprint for image_size {fingerprint['image_size']}, the job trains at {image_size}")
    return fingerprint


def usable_fingerprints(results: Mapping[str, Optional[Shareable]], image_size: int
                        ) -> Tuple[Dict[str, dict], Dict[str, str]]:
    """Split the training sites' fingerprint results (site -> result, None: none arrived) into the
    audited fingerprints (``received_fingerprint``) and the failed sites with why."""
    fingerprints: Dict[str, dict] = {}
    failed: Dict[str, str] = {}
    for site, result in results.items():
        if result is None:
            failed[site] = "no result (timed out or disconnected)"
            continue
        try:
            fingerprints[site] = received_fingerprint(result, site, image_size)
        except Exception as err:  # any unusable result counts as a failed site
            failed[site] = str(err)
    return fingerprints, failed


def plan_from_fingerprints(fingerprints: Mapping[str, dict], failed: Mapping[str, str], min_clients: int,
                           gpu_memory_target_gb: float) -> dict:
    """nnU-Net's plan from the merged fingerprints (sites in client-name order), or PlanningError saying
    why none can be made: fewer than ``min_clients`` fingerprints (every failed site and why), sites that
    cannot share a plan, or the planner's own failure."""
    if len(fingerprints) < min_clients:
        details = "; ".join(f"{site}: {why}" for site, why in sorted(failed.items()))
        raise PlanningError(f"{len(fingerprints)} of {len(fingerprints) + len(failed)} training sites sent a usable "
                            f"fingerprint, {min_clients} needed. Failed: {details}")
    try:
        merged = merge_fingerprints([fingerprints[s] for s in sorted(fingerprints)])
        return make_plan(merged, gpu_memory_target_gb=gpu_memory_target_gb)
    except FingerprintError as err:
        raise PlanningError(str(err)) from err


def plan_task_data(plan: dict) -> Shareable:
    """The plan task's data: a DXO of COLLECTION holding exactly the plan."""
    return DXO(DataKind.COLLECTION, {PLAN_KEY: plan}).to_shareable()


class NnUNetPlanning(Controller):
    """NVFlare workflow: the federated planning step (module docstring). Runs before ScatterAndGather.

    Args:
        train_sites: client names that train (and fingerprint); empty = every client.
        min_clients: fingerprints needed to plan, and training sites that must accept the plan.
        bundle_root: the job's bundle folder relative to the app root (image size and nnU-Net's GPU
            memory target are read from its settings, as the sites read them).
        task_timeout: seconds a site may take per planning task (0 = no limit).
    """

    def __init__(self, train_sites: Optional[Sequence[str]] = None, min_clients: int = 1,
                 bundle_root: str = BUNDLE_IN_APP, task_timeout: int = 0):
        super().__init__()
        self.train_sites: List[str] = list(train_sites or [])
        self.min_clients = as_int("min_clients", min_clients, minimum=1)
        self.bundle_root = bundle_root
        self.task_timeout = as_int("task_timeout", task_timeout, minimum=0)

    def start_controller(self, fl_ctx: FLContext) -> None:
        pass

    def stop_controller(self, fl_ctx: FLContext) -> None:
        pass

    def process_result_of_unknown_task(self, client, task_name: str, client_task_id: str, result: Shareable,
                                       fl_ctx: FLContext) -> None:
        self.log_warning(fl_ctx, f"ignored a late result of task {task_name} from {client.name}")

    def _panic(self, reason: str, fl_ctx: FLContext) -> None:
        message = f"nnU-Net planning failed before training: {reason}"
        self.log_error(fl_ctx, message)
        self.system_panic(message, fl_ctx)

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        app_root = fl_ctx.get_prop(FLContextKey.APP_ROOT)
        bundle = os.path.join(app_root, self.bundle_root)
        image_size = as_int("image_size", bundle_setting(bundle, "image_size"), minimum=1)
        memory = as_float("gpu_memory_target_gb", bundle_setting(bundle, "gpu_memory_target_gb"), above=0)
        clients = [c.name for c in fl_ctx.get_engine().get_clients()]
        sites = self.train_sites or clients

        results = self._collect_fingerprints(sites, abort_signal, fl_ctx)
        if results is None:
            return
        fingerprints, failed = usable_fingerprints(results, image_size)
        for site in sites:
            if site in fingerprints:
                self.log_info(fl_ctx, f"nnU-Net fingerprint of {site}: {fingerprints[site]['num_cases']} cases")
            else:
                self.log_error(fl_ctx, f"site {site}: no usable nnU-Net fingerprint: {failed[site]}")
        try:
            plan = plan_from_fingerprints(fingerprints, failed, self.min_clients, memory)
        except PlanningError as err:
            self._panic(str(err), fl_ctx)
            return
        if failed:
            self.log_warning(fl_ctx, f"planning without {', '.join(sorted(failed))} ({len(fingerprints)} of "
                                     f"{len(sites)} sites, min_clients {self.min_clients})")
        path = save_plan(plan, os.path.join(app_root, PLAN_FILENAME))
        fl_ctx.set_prop(PLAN_PATH, path, private=True, sticky=True)
        config = plan["plans"]["configurations"][plan["configuration"]]
        self.log_info(fl_ctx, f"nnU-Net plan from {len(fingerprints)} sites ({plan['sites']} cases): patch "
                              f"{config['patch_size']}, batch {config['batch_size']}, "
                              f"{config['architecture']['arch_kwargs']['n_stages']} stages; saved to {path}")
        self._send_plan(plan, sites, clients, abort_signal, fl_ctx)

    def _collect_fingerprints(self, sites: List[str], abort_signal: Signal,
                              fl_ctx: FLContext) -> Optional[Dict[str, Optional[Shareable]]]:
        """Every training site's fingerprint result (None where none arrived); None if the job aborted."""
        results: Dict[str, Optional[Shareable]] = {site: None for site in sites}

        def received(client_task: ClientTask, fl_ctx: FLContext) -> None:
            results[client_task.client.name] = client_task.result
            client_task.result = None

        task = Task(FINGERPRINT_TASK, Shareable(), timeout=self.task_timeout, result_received_cb=received)
        self.broadcast_and_wait(task, fl_ctx, targets=sites, min_responses=len(sites), abort_signal=abort_signal)
        return None if abort_signal.triggered else results

    def _send_plan(self, plan: dict, sites: List[str], clients: List[str], abort_signal: Signal,
                   fl_ctx: FLContext) -> None:
        """Send the plan to every client; panic if fewer than min_clients training sites accept it."""
        accepted: List[str] = []

        def received(client_task: ClientTask, fl_ctx: FLContext) -> None:
            site, result = client_task.client.name, client_task.result
            code = result.get_return_code(ReturnCode.OK)
            if code == ReturnCode.OK:
                accepted.append(site)
            else:
                self.log_error(fl_ctx, f"site {site} did not accept the nnU-Net plan ({code}): "
                                       f"{result.get_header(ERROR_MESSAGE) or 'no message, see the site log'}")
            client_task.result = None

        task = Task(PLAN_TASK, plan_task_data(plan), timeout=self.task_timeout, result_received_cb=received)
        self.broadcast_and_wait(task, fl_ctx, targets=clients, min_responses=len(clients), abort_signal=abort_signal)
        if abort_signal.triggered:
            return
        training = [s for s in sites if s in accepted]
        if len(training) < self.min_clients:
            self._panic(f"only {training} of the training sites {sites} accepted the plan, {self.min_clients} needed",
                        fl_ctx)


class PlannedModelPersistor(TransmittedModelPersistor):
    """TransmittedModelPersistor of a job whose network is planned: the global model is the bundle's
    ``network_def`` built from the plan the planning workflow published (``PLAN_PATH``), so it is built
    when ScatterAndGather first asks for the model, not when the run starts (the plan does not exist
    then). Without a plan (no planning workflow ran before) the job stops with a message saying so."""

    def _build_model(self, fl_ctx: FLContext) -> None:
        if fl_ctx.get_prop(PLAN_PATH) is not None:  # at START_RUN there is no plan yet: load_model builds
            super()._build_model(fl_ctx)

    def _network_overrides(self, fl_ctx: FLContext, bundle_root: str) -> dict:
        # output_dir None: the planning workflow saved the plan already; the bundle need not copy it
        return {**super()._network_overrides(fl_ctx, bundle_root), "plans_file": fl_ctx.get_prop(PLAN_PATH),
                "output_dir": None}

    def load_model(self, fl_ctx: FLContext):
        if self.model is None:
            if fl_ctx.get_prop(PLAN_PATH) is None:
                self.system_panic("no nnU-Net plan: the planning workflow (fedfms.runtime.nnunet_planning."
                                  "NnUNetPlanning) must run before the training workflow", fl_ctx)
                return None
            self._build_model(fl_ctx)
        return super().load_model(fl_ctx)

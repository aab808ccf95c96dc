"""The site side of FednnU-Net's federated planning step (server side: ``nnunet_planning``).

``PlannedBundleExecutor`` is the ``BundleExecutor`` of a job whose network is planned (bundles/nnunet),
with two more tasks before training:

- "nnunet_fingerprint" (training sites): nnU-Net's dataset fingerprint of the site's training split
  (``fedfms.nnunet.site_fingerprint``), audited with ``check_fingerprint`` before it leaves: aggregate
  numbers only (per-case shapes, spacings, relative sizes; intensity statistics), never image content.
  If it cannot be computed (empty split, unreadable sample) the site replies EXECUTION_EXCEPTION with
  the error (naming the site and the file) in the reply header, and logs it.
- "nnunet_plan" (every site): the server's plan, checked (``check_plan``; the job's image size and the
  site's label channels), saved as ``nnunet_plans.json`` in the site's bundle output folder and given
  to the bundle as ``plans_file``, so every site builds and trains the same network.

Train and validate are BundleExecutor's, and refused until a plan arrived: without one the bundle
would plan from the site's own data alone, a network the others do not share. The plan is found on
disk (the run's folder), not only in memory: NVFlare's simulator starts a new client process for each
task when it has fewer threads than clients, and a restarted site must not lose it.
"""

from __future__ import annotations

import os

from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal

from fedfms.core.options import as_int
from fedfms.core.wire import ERROR_MESSAGE, FINGERPRINT_KEY, FINGERPRINT_TASK, PLAN_KEY, PLAN_TASK
from fedfms.nnunet import PLAN_FILENAME, PlanningError, check_fingerprint, check_plan, resolve_plan, save_plan, site_fingerprint

from .bundle_network import read_train_config
from .executor import BundleExecutor

PLANS_FILE = "plans_file"  # the bundle option naming the plan it trains with


class PlannedBundleExecutor(BundleExecutor):
    """BundleExecutor plus the planning tasks (module docstring).

    Args:
        args, kwargs: BundleExecutor's (both declared so that NVFlare's Job API writes them into the job).
        fingerprint_task_name, plan_task_name: the planning tasks' names.
    """

    def __init__(self, *args, fingerprint_task_name: str = FINGERPRINT_TASK, plan_task_name: str = PLAN_TASK, **kwargs):
        super().__init__(*args, **kwargs)
        self.fingerprint_task_name, self.plan_task_name = fingerprint_task_name, plan_task_name

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name not in (self.fingerprint_task_name, self.plan_task_name):
            if task_name in (self.train_task_name, self.validate_task_name) and not self._has_plan(fl_ctx):
                return self._failed(task_name, PlanningError(
                    f"site {self.site}: no nnU-Net plan received from the server; the job's planning step "
                    f"({self.plan_task_name}) must run before {task_name}"), fl_ctx)
            return super().execute(task_name, shareable, fl_ctx, abort_signal)
        try:
            if task_name == self.fingerprint_task_name:
                return self._fingerprint(fl_ctx)
            return self._receive_plan(shareable, fl_ctx)
        except Exception as err:  # reported to the server with the message, which names the site and file
            return self._failed(task_name, err, fl_ctx)

    def _has_plan(self, fl_ctx: FLContext) -> bool:
        """Whether this run's plan task saved a plan (set as ``plans_file`` when it did)."""
        overrides = self._site_overrides(fl_ctx)
        if PLANS_FILE not in overrides:
            path = os.path.join(str(overrides["output_dir"]), PLAN_FILENAME)  # the run's folder: this job's plan
            if not os.path.isfile(path):
                return False
            overrides[PLANS_FILE] = path
        return True

    def _failed(self, task_name: str, err: Exception, fl_ctx: FLContext) -> Shareable:
        folder = (self.site_folders or {}).get(self.site, self.site)  # errors of the data name the site folder
        named = str(err).startswith((f"site {self.site}:", f"site {folder}:"))
        message = str(err) if named else f"site {self.site}: {err}"
        self.log_exception(fl_ctx, f"task {task_name} failed: {message}")
        reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
        reply.set_header(ERROR_MESSAGE, message)
        return reply

    def _image_size(self, fl_ctx: FLContext) -> int:
        """The frame size the job's bundle trains at (its configs with the job's and executor's overrides)."""
        parser = read_train_config(self._bundle_path(fl_ctx))
        parser.update(dict(self.overrides or {}))
        return as_int("image_size", parser.get_parsed_content("image_size"), minimum=1)

    def _fingerprint(self, fl_ctx: FLContext) -> Shareable:
        datalist = str(self._site_overrides(fl_ctx)["datalist"])
        fingerprint = site_fingerprint(datalist, image_size=self._image_size(fl_ctx), progress=False)
        check_fingerprint(fingerprint, source=f"of site {self.site}")  # what leaves the site: aggregates only
        self.log_info(fl_ctx, f"site {self.site}: sending the nnU-Net fingerprint of {fingerprint['num_cases']} "
                              f"training samples of {datalist}")
        return DXO(DataKind.COLLECTION, {FINGERPRINT_KEY: fingerprint}).to_shareable()

    def _receive_plan(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        dxo = from_shareable(shareable)
        if dxo.data_kind != DataKind.COLLECTION or set(dxo.data) != {PLAN_KEY}:
            raise PlanningError(f"the server's plan task holds {getattr(dxo.data_kind, 'value', dxo.data_kind)} with keys "
                                f"{sorted(dxo.data)}, expected {DataKind.COLLECTION.value} with exactly {[PLAN_KEY]}")
        plan = dxo.data[PLAN_KEY]
        check_plan(plan, source="the server's plan")
        overrides = self._site_overrides(fl_ctx)
        path = save_plan(plan, os.path.join(str(overrides["output_dir"]), PLAN_FILENAME))
        try:
            resolve_plan(path, overrides["datalist"], self._image_size(fl_ctx))  # the job's frame, this site's labels
        except Exception:
            os.remove(path)  # a plan this site cannot train with must not be found by a later task
            raise
        overrides[PLANS_FILE] = path
        config = plan["plans"]["configurations"][plan["configuration"]]
        self.log_info(fl_ctx, f"site {self.site}: nnU-Net plan of sites {plan['sites']} received (patch "
                              f"{config['patch_size']}, batch {config['batch_size']}), saved to {path}")
        return make_reply(ReturnCode.OK)

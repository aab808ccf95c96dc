"""The site side of a fedfms job: an NVFlare Executor that runs the job's MONAI bundle.

Each round (task "train") the site
1. accepts the global model only if it holds exactly its transmitted tensors (``selection``), every value
   is finite, and it was built on the same frozen weights (fingerprint in the DXO meta),
2. validates it on the site's validation split (the bundle's ``validate#evaluator``),
3. trains ``local_epochs`` epochs from it with the bundle's ``train#trainer`` (driven by
   ``monai.fl.client.MonaiAlgo``),
4. returns the transmitted tensors as a DXO of WEIGHTS with meta NUM_STEPS_CURRENT_ROUND = its number
   of training samples (so FedAvg weights sites by data size, as in the paper), the validation
   metrics as INITIAL_METRICS, its mean training loss and the serialized size of what it sends.
Task "validate" (cross-site evaluation) scores a received model on the site's test split with the
bundle's evaluate configuration. The network is whatever the bundle's ``network_def`` builds.
"""

from __future__ import annotations

import os
from typing import Dict, Mapping, Optional

import torch
from ignite.metrics import Average
from monai.fl.client import MonaiAlgo
from monai.fl.utils.constants import ExtraItems
from monai.fl.utils.exchange_object import ExchangeObject
from monai.handlers import from_engine
from monai.networks.utils import copy_model_state
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from fedfms.bundle.datalist import load_datalist
from fedfms.core.options import as_int
from fedfms.core.wire import BUNDLE_IN_APP, BYTES_SENT, EVALUATE_CONFIG, FROZEN_SHA256, TEST_DICE, TRAIN_LOSS, VAL_DICE

from .bundle_network import config_files, uses_sam_checkpoint
from .finite import require_finite
from .selection import (
    TransmissionError, check_incoming, frozen_fingerprint, select_outgoing, serialized_size, transmitted_names,
)
from .site_config import resolve_site_config

_LOSS_METRIC = "fedfms_epoch_loss"


def _scalars(metrics: Mapping[str, object]) -> Dict[str, float]:
    """The scalar entries of an engine's metrics (numbers, one-element tensors) as floats, what DXO meta
    can carry; per-class vectors and other values are left out."""
    scalars = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars[name] = float(value)
    return scalars


class BundleExecutor(Executor):
    """Runs a MONAI bundle shipped in the job (``app/config/bundle``) on this site's data.

    The bundle's configs/train.json with the job's settings (configs/job.json, written by the job
    generator: encoder, image size, batch size, ...) on top; this site's datalist, device, SAM checkpoint
    and output folder come from its own configuration (``site_config``).

    Args:
        dataset: dataset name ("prostate", ...), the folder under the site's data root.
        bundle_root: bundle folder relative to the app root.
        local_epochs: epochs of local training per round (paper: 1).
        overrides: further bundle config overrides (on top of configs/job.json).
        site_folders: client name -> data folder name where they differ (NVFlare client names cannot
            contain dots: client "ISBI1_5" reads folder "ISBI1.5").
        evaluate_workflow: MONAI workflow type of the evaluate configuration ("train" when
            configs/evaluate.json overrides ``validate#...`` of configs/train.json).
        analytic_sender_id: id of an NVFlare TBWriter component streaming metrics to the server, or "".
    """

    def __init__(
        self,
        dataset: str,
        bundle_root: str = BUNDLE_IN_APP,
        local_epochs: int = 1,
        overrides: Optional[Mapping[str, object]] = None,
        site_folders: Optional[Mapping[str, str]] = None,
        evaluate_workflow: str = "train",
        analytic_sender_id: str = "analytic_sender",
        train_task_name: str = AppConstants.TASK_TRAIN,
        validate_task_name: str = AppConstants.TASK_VALIDATION,
    ):
        super().__init__()
        self.dataset, self.bundle_root = dataset, bundle_root
        self.local_epochs = as_int("local_epochs", local_epochs, minimum=1)
        self.overrides, self.site_folders = overrides, site_folders  # as given: NVFlare's Job API writes them back
        self.evaluate_workflow = evaluate_workflow
        self.analytic_sender_id = analytic_sender_id
        self.train_task_name, self.validate_task_name = train_task_name, validate_task_name
        self.site = ""
        self.bundle_overrides: Dict[str, object] = {}
        self.trainer_algo: Optional[MonaiAlgo] = None
        self.evaluate_algo: Optional[MonaiAlgo] = None
        self.names: frozenset[str] = frozenset()
        self.fingerprint: Optional[str] = None
        self.num_train_samples = 0
        self.writer = None

    # -- lifecycle --------------------------------------------------------------------------------
    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self.site = fl_ctx.get_identity_name()
            if self.analytic_sender_id:
                self.writer = fl_ctx.get_engine().get_component(self.analytic_sender_id)
        elif event_type == EventType.ABORT_TASK:
            for algo in (self.trainer_algo, self.evaluate_algo):
                if algo is not None:
                    algo.abort()
        elif event_type == EventType.END_RUN:
            for algo in (self.trainer_algo, self.evaluate_algo):
                if algo is not None:
                    algo.finalize()

    def _site_overrides(self, fl_ctx: FLContext) -> Dict[str, object]:
        """Bundle overrides for this site: the job's plus its datalist, device, checkpoint, outputs."""
        if not self.bundle_overrides:
            workspace = fl_ctx.get_engine().get_workspace()
            folder = (self.site_folders or {}).get(self.site, self.site)
            config = resolve_site_config(workspace.get_root_dir(), self.dataset, folder)
            self.log_info(fl_ctx, f"site {self.site}: datalist {config.datalist}, SAM weights "
                          f"{config.sam_checkpoint or 'random'}, device {config.device} (from {config.source})")
            overrides = dict(self.overrides or {}, datalist=str(config.datalist), device=config.device)
            if uses_sam_checkpoint(self._bundle_path(fl_ctx)):
                overrides["sam_checkpoint"] = str(config.sam_checkpoint) if config.sam_checkpoint else None
            overrides["output_dir"] = os.path.join(workspace.get_run_dir(fl_ctx.get_job_id()), "bundle")
            self.bundle_overrides = overrides
        return self.bundle_overrides

    def _bundle_path(self, fl_ctx: FLContext) -> str:
        return os.path.join(fl_ctx.get_prop(FLContextKey.APP_ROOT), self.bundle_root)

    def _extra(self, fl_ctx: FLContext) -> dict:
        return {ExtraItems.CLIENT_NAME: self.site, ExtraItems.APP_ROOT: fl_ctx.get_prop(FLContextKey.APP_ROOT)}

    def _trainer_algo(self, fl_ctx: FLContext) -> MonaiAlgo:
        if self.trainer_algo is None:
            algo = MonaiAlgo(
                bundle_root=self.bundle_root,
                local_epochs=self.local_epochs,
                send_weight_diff=False,  # WEIGHTS: the server averages models, not differences
                config_train_filename=config_files(self._bundle_path(fl_ctx)),
                train_kwargs=self._site_overrides(fl_ctx),
                config_evaluate_filename=None,
            )
            algo.initialize(self._extra(fl_ctx))
            Average(output_transform=from_engine(["loss"], first=True)).attach(algo.trainer, _LOSS_METRIC)
            self.names = transmitted_names(algo.trainer.network)
            # n_k from the datalist, not the loader: nnU-Net's batch generator has no dataset to count
            self.num_train_samples = len(load_datalist(self.bundle_overrides["datalist"], "training"))
            if self.num_train_samples == 0:
                raise ValueError(f"site {self.site}: the training split of {self.bundle_overrides['datalist']} is empty")
            self.trainer_algo = algo
        return self.trainer_algo

    def _evaluate_algo(self, fl_ctx: FLContext) -> MonaiAlgo:
        if self.evaluate_algo is None:
            overrides = dict(self._site_overrides(fl_ctx))
            overrides["output_dir"] = os.path.join(str(overrides["output_dir"]), "cross_site")
            overrides["ckpt_path"] = ""  # the model to score comes from the server, not from a file
            files = config_files(self._bundle_path(fl_ctx))
            algo = MonaiAlgo(
                bundle_root=self.bundle_root,
                config_train_filename=None,
                config_evaluate_filename=[files[0], EVALUATE_CONFIG, *files[1:]],
                eval_kwargs=overrides,
                eval_workflow_name=self.evaluate_workflow,
            )
            algo.initialize(self._extra(fl_ctx))
            if not self.names:
                self.names = transmitted_names(algo.evaluator.network)
            self.evaluate_algo = algo
        return self.evaluate_algo

    # -- tasks ------------------------------------------------------------------------------------
    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        try:
            if task_name == self.train_task_name:
                return self._train(shareable, fl_ctx, abort_signal)
            if task_name == self.validate_task_name:
                return self._validate(shareable, fl_ctx)
            self.log_error(fl_ctx, f"site {self.site}: unknown task {task_name!r}")
            return make_reply(ReturnCode.TASK_UNKNOWN)
        except Exception as err:  # reported to the server, which tolerates it while min_clients are met
            self.log_exception(fl_ctx, f"site {self.site}: task {task_name} failed: {err}")
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)

    def _received(self, shareable: Shareable, what: str, network: torch.nn.Module) -> ExchangeObject:
        dxo = from_shareable(shareable)
        if dxo.data_kind != DataKind.WEIGHTS:
            raise ValueError(f"{what}: expected a DXO of {DataKind.WEIGHTS}, got {dxo.data_kind}")
        expected = dxo.get_meta_prop(FROZEN_SHA256)
        if expected is not None:
            if self.fingerprint is None:
                self.fingerprint = frozen_fingerprint(network.state_dict(), self.names)
            if expected != self.fingerprint:
                raise TransmissionError(
                    f"{what} was built on other frozen weights than site {self.site}'s (SAM checkpoint "
                    f"{self.bundle_overrides.get('sam_checkpoint') or 'none: random init'}); the server and every "
                    "site must load the same SAM checkpoint file")
        weights = check_incoming(dxo.data, self.names, what)
        require_finite(weights, what)  # a NaN global model must not be validated, trained or scored
        return ExchangeObject(weights=weights)

    @staticmethod
    def _validate_received(algo: MonaiAlgo, model: ExchangeObject) -> Dict[str, float]:
        """Scalar metrics of the received global model on the site's validation split, its key metric
        (the bundle's, e.g. Dice) also under VAL_DICE. It runs the training workflow's own evaluator
        (same network object: a second parse of the bundle would build and load a second SAM), numbered
        like the trainer's epochs, as MonaiAlgo.evaluate does."""
        evaluator = algo.train_workflow.evaluator
        copy_model_state(src=dict(model.weights), dst=evaluator.network)
        evaluator.run(algo.trainer.state.epoch + 1)
        metrics = _scalars(evaluator.state.metrics)
        return {**metrics, VAL_DICE: metrics[evaluator.state.key_metric_name]}

    def _train(self, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        algo = self._trainer_algo(fl_ctx)
        current_round = shareable.get_header(AppConstants.CURRENT_ROUND, 0)
        global_model = self._received(shareable, f"server (round {current_round})", algo.trainer.network)

        metrics = self._validate_received(algo, global_model)
        val_dice = metrics[VAL_DICE]
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        algo.train(global_model)
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        loss = float(algo.trainer.state.metrics[_LOSS_METRIC])

        sent = select_outgoing(algo.get_weights().weights, self.names, f"site {self.site}")
        result = DXO(
            DataKind.WEIGHTS,
            sent,
            {MetaKey.NUM_STEPS_CURRENT_ROUND: self.num_train_samples, MetaKey.INITIAL_METRICS: metrics},
        )
        size = serialized_size(result)
        result.set_meta_prop(TRAIN_LOSS, loss)
        result.set_meta_prop(BYTES_SENT, size)
        self.log_info(
            fl_ctx,
            f"site {self.site} round {current_round}: global model validation Dice {val_dice:.4f}, "
            f"train loss {loss:.4f} on {self.num_train_samples} samples, sending {len(sent)} tensors ({size} bytes)",
        )
        if self.writer is not None:
            for tag, value in ((VAL_DICE, val_dice), (TRAIN_LOSS, loss), (BYTES_SENT, size)):
                self.writer.add_scalar(tag, value, global_step=int(current_round))
        return result.to_shareable()

    def _validate(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        algo = self._evaluate_algo(fl_ctx)
        owner = shareable.get_header(AppConstants.MODEL_OWNER, "?")
        received = self._received(shareable, f"server model {owner}", algo.evaluator.network)
        metrics = _scalars(algo.evaluate(received).metrics)
        test_dice = metrics[algo.evaluator.state.key_metric_name]
        self.log_info(fl_ctx, f"site {self.site}: model {owner} test Dice {test_dice:.4f}")
        return DXO(DataKind.METRICS, {TEST_DICE: test_dice, **metrics}).to_shareable()

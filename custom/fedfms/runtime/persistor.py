"""Server-side model persistence: the full global model on disk, only transmitted tensors on the wire."""

from __future__ import annotations

import os
from typing import Mapping, Optional

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import ModelLearnable, ModelLearnableKey, make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor

from fedfms.core.wire import BUNDLE_IN_APP, FROZEN_SHA256

from .bundle_network import build_bundle_network, uses_sam_checkpoint
from .finite import NonFiniteModelError, nonfinite, require_finite
from .selection import frozen_fingerprint, select_outgoing, transmitted_names
from .site_config import resolve_sam_checkpoint


#: train_conf key of a saved global model: the round whose aggregate it is
ROUND_KEY = "fedfms_round"


class TransmittedModelPersistor(PTFileModelPersistor):
    """PTFileModelPersistor whose model is the job bundle's ``network_def`` (configs/train.json with the
    job's configs/job.json on top), built when the run starts.

    The saved files (FL_global_model.pt, best_FL_global_model.pt) hold the full state dict: the
    aggregated tensors merged into the server's initial model. Every model it hands out (the initial
    global model of round 0, and the final and best models for cross-site evaluation) is reduced to the
    transmitted tensors by ``selection.select_outgoing``, so a frozen FedMSA encoder never leaves the
    server either; the models it sends carry the fingerprint of its frozen weights, which sites check.
    For SAM bundles the server builds the model from its own SAM checkpoint (site config of the server
    workspace, see ``site_config``) so round 0 starts every site from the pretrained decoder; without
    one, SAM weights are random.

    Every aggregated global model is checked before it is saved: one holding NaN/inf raises
    ``NonFiniteModelError`` naming the round and tensor, which stops the job (ScatterAndGather turns the
    exception into a system panic: the job ends with an error status, and the last good
    FL_global_model.pt stays on disk). Saved files record the round in ``train_conf["fedfms_round"]``.

    Resume (``source_ckpt_file_full_name``, PTFileModelPersistor's option, set by the job generator to
    the crashed job's FL_global_model.pt): the file must hold a finite model with exactly this model's
    tensor names and shapes and the same frozen weights, or the job stops naming the file and problem.

    Args:
        bundle_root: bundle folder relative to the app root (the job carries the bundle configs).
        overrides: further bundle config overrides (on top of configs/job.json).
        source_ckpt_file_full_name: PTFileModelPersistor's: start from this saved global model (resume).
        kwargs: passed to PTFileModelPersistor (file names, load_device, ...).
    """

    def __init__(self, bundle_root: str = BUNDLE_IN_APP, overrides: Optional[Mapping[str, object]] = None,
                 source_ckpt_file_full_name: Optional[str] = None, **kwargs):
        # source_ckpt_file_full_name is declared so that NVFlare's Job API writes it into the job config
        super().__init__(model=None, source_ckpt_file_full_name=source_ckpt_file_full_name, **kwargs)
        self.bundle_root = bundle_root
        self.overrides = overrides  # as given: NVFlare's Job API writes it back
        self.names: frozenset[str] = frozenset()
        self.fingerprint = ""

    def handle_event(self, event: str, fl_ctx: FLContext) -> None:
        if event == EventType.START_RUN:  # PTFileModelPersistor sets itself up with self.model on START_RUN
            self._build_model(fl_ctx)
        super().handle_event(event, fl_ctx)

    def _build_model(self, fl_ctx: FLContext) -> None:
        bundle_root = os.path.join(fl_ctx.get_prop(FLContextKey.APP_ROOT), self.bundle_root)
        self.model = build_bundle_network(bundle_root, self._network_overrides(fl_ctx, bundle_root))
        self.names = transmitted_names(self.model)
        self.fingerprint = frozen_fingerprint(self.model.state_dict(), self.names)
        self.log_info(
            fl_ctx,
            f"global model {type(self.model).__name__}: {len(self.model.state_dict())} tensors held, "
            f"{len(self.names)} transmitted",
        )

    def _network_overrides(self, fl_ctx: FLContext, bundle_root: str) -> dict:
        """Bundle overrides of the server's network: the job's, on the CPU, with the server's SAM checkpoint."""
        overrides = dict(self.overrides or {}, device="cpu")
        if uses_sam_checkpoint(bundle_root):
            checkpoint = resolve_sam_checkpoint(fl_ctx.get_engine().get_workspace().get_root_dir())
            overrides["sam_checkpoint"] = str(checkpoint) if checkpoint else None
            self.log_info(fl_ctx, f"global model SAM weights: {checkpoint or 'random initialisation'}")
        return overrides

    def _transmitted(self, ml: Optional[ModelLearnable], what: str) -> Optional[ModelLearnable]:
        if ml is None:
            return None
        weights = select_outgoing(ml[ModelLearnableKey.WEIGHTS], self.names, f"server {what}")
        return make_model_learnable(weights, {**(ml.get(ModelLearnableKey.META) or {}), FROZEN_SHA256: self.fingerprint})

    def load_model(self, fl_ctx: FLContext) -> ModelLearnable:
        loaded = super().load_model(fl_ctx)
        if loaded is not None and self.source_ckpt_file_full_name:
            problem = self._resume_problem(dict(self.persistence_manager.var_dict), fl_ctx)
            if problem:
                self.system_panic(f"cannot resume from {self.source_ckpt_file_full_name}: {problem}", fl_ctx)
                return None
        return self._transmitted(loaded, "initial global model")

    def _resume_problem(self, state: dict, fl_ctx: FLContext) -> Optional[str]:
        """Why a resume checkpoint does not fit this job's model, or None (logs the round it holds)."""
        own = self.model.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            return f"tensor names differ from the job's model (missing: {missing[:3]}, unexpected: {unexpected[:3]})"
        shapes = [k for k in sorted(own) if tuple(state[k].shape) != tuple(own[k].shape)]
        if shapes:
            return f"tensor {shapes[0]} has shape {tuple(state[shapes[0]].shape)}, the job's model {tuple(own[shapes[0]].shape)}"
        if frozen_fingerprint(state, self.names) != self.fingerprint:
            return "its frozen (never trained) weights differ from the server's SAM checkpoint"
        reason = nonfinite(state)
        if reason:
            return reason
        saved = (self.persistence_manager.train_conf or {}).get(ROUND_KEY)
        start = fl_ctx.get_prop(AppConstants.START_ROUND)
        self.log_info(fl_ctx, f"resuming at round {start} from {self.source_ckpt_file_full_name} (global model of round {saved})")
        if saved is not None and start is not None and saved != start - 1:
            self.log_warning(fl_ctx, f"the checkpoint holds the global model of round {saved}, the job resumes at round "
                                     f"{start}: the report of the crashed job ends at round {start - 1}")
        return None

    def save_model(self, ml: ModelLearnable, fl_ctx: FLContext) -> None:
        """Save the aggregated global model (after a finiteness check), recording its round."""
        round_ = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        reason = nonfinite(ml[ModelLearnableKey.WEIGHTS])
        if reason:
            message = (f"the aggregated global model of round {round_} is not finite ({reason}); not saved, the job "
                       f"stops. The last finite global model is {self._ckpt_save_path}")
            self.log_error(fl_ctx, message)
            raise NonFiniteModelError(message)
        manager = self._get_persistence_manager(fl_ctx)
        manager.update(ml)
        manager.train_conf = {**(manager.train_conf or {}), ROUND_KEY: round_}
        require_finite(manager.var_dict, f"global model of round {round_}")  # the merged full state too
        self.save_model_file(self._ckpt_save_path)

    def get_model(self, model_file: str, fl_ctx: FLContext) -> Optional[ModelLearnable]:
        return self._transmitted(super().get_model(model_file, fl_ctx), model_file)

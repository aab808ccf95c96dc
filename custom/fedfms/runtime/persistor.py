"""Server-side model persistence: the full global model on disk, only transmitted tensors on the wire."""

from __future__ import annotations

import os
from typing import Mapping, Optional

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import ModelLearnable, ModelLearnableKey, make_model_learnable
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor

from fedfms.core.wire import BUNDLE_IN_APP, FROZEN_SHA256

from .bundle_network import build_bundle_network, uses_sam_checkpoint
from .selection import frozen_fingerprint, select_outgoing, transmitted_names
from .site_config import resolve_sam_checkpoint


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

    Args:
        bundle_root: bundle folder relative to the app root (the job carries the bundle configs).
        overrides: further bundle config overrides (on top of configs/job.json).
        kwargs: passed to PTFileModelPersistor (file names, load_device, ...).
    """

    def __init__(self, bundle_root: str = BUNDLE_IN_APP, overrides: Optional[Mapping[str, object]] = None, **kwargs):
        super().__init__(model=None, **kwargs)
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
        return self._transmitted(super().load_model(fl_ctx), "initial global model")

    def get_model(self, model_file: str, fl_ctx: FLContext) -> Optional[ModelLearnable]:
        return self._transmitted(super().get_model(model_file, fl_ctx), model_file)

"""Best-global-model selection that trusts only the results the aggregator accepted."""

from __future__ import annotations

from typing import Dict, Tuple

from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.widgets.intime_model_selector import IntimeModelSelector

from .aggregation import REJECTED_UPDATES


class AcceptedModelSelector(IntimeModelSelector):
    """NVFlare's IntimeModelSelector (the received global model's validation metric, weighted by n_k,
    fires GLOBAL_BEST_MODEL_AVAILABLE when it beats the best so far), counting only the results the
    aggregator accepted: a result refused on arrival (NaN, wrong shapes, bad n_k) or rejected as an
    outlier at aggregation does not vote with its self-reported metric.

    IntimeModelSelector sums every contribution before aggregation; the aggregator's outlier test runs
    during aggregation, so this selector keeps each site's share of the sums, withdraws the rejected
    ones and decides after aggregation (the global model in the FL context is then still the one the
    sites validated). It calls IntimeModelSelector's ``_before_accept`` / ``_before_aggregate`` and reads
    its running sums: no public API exposes them (NVFlare 2.9); tests/federated/test_library_internals.py
    fails if they change.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._shares: Dict[str, Tuple[float, float, float]] = {}

    def _sums(self) -> Tuple[float, float, float]:
        return (self.validation_metric_weighted_sum, self.raw_validation_metric_weighted_sum,
                self.validation_metric_sum_of_weights)

    def _withdraw(self, site: str) -> None:
        share = self._shares.pop(site, None)
        if share:
            self.validation_metric_weighted_sum -= share[0]
            self.raw_validation_metric_weighted_sum -= share[1]
            self.validation_metric_sum_of_weights -= share[2]

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == AppEventType.ROUND_STARTED:
            self._shares = {}
            super().handle_event(event_type, fl_ctx)
        elif event_type == AppEventType.BEFORE_CONTRIBUTION_ACCEPT:
            before = self._sums()
            self._before_accept(fl_ctx)
            peer = fl_ctx.get_peer_context()
            site = peer.get_identity_name(default="?") if peer else "?"
            self._shares[site] = tuple(after - prior for after, prior in zip(self._sums(), before))
        elif event_type == AppEventType.AFTER_CONTRIBUTION_ACCEPT:
            if not fl_ctx.get_prop(AppConstants.AGGREGATION_ACCEPTED):
                peer = fl_ctx.get_peer_context()
                self._withdraw(peer.get_identity_name(default="?") if peer else "?")
        elif event_type == AppEventType.BEFORE_AGGREGATION:
            return  # decided after aggregation, once the aggregator's outlier test is done
        elif event_type == AppEventType.AFTER_AGGREGATION:
            for site in fl_ctx.get_prop(REJECTED_UPDATES) or {}:
                self._withdraw(site)
            self._before_aggregate(fl_ctx)
        else:
            super().handle_event(event_type, fl_ctx)

"""Server-side job report: one log line per round, a learning-curve file, a cross-site results table.

Per round it logs each training site's loss, validation Dice of the received global model and the bytes
that crossed the wire each way (up: the site's training result as it reached the server, before the
server's filters; down: the train task as it left the server, after its filters; FOBS-serialized size,
measured once per distinct message layout and round), the sites' Dice weighted by training samples (the
quantity the best model is chosen by), any training site that sent nothing (failed or timed out), any
result the aggregator rejected (with the reason, see ``aggregation.GuardedAggregator``; rejected results
do not count in the weighted Dice), what the aggregator did (rule, update norms, clipping) and, with
differential privacy, the (epsilon, delta) each site reports having spent. A result lacking a meta entry
is logged with "-". A resumed job (``resume_from``) starts its history with the crashed job's rounds.
Files in the server's run folder: ``fedfms_rounds.json`` (per-round history; ``traffic``: site ->
{bytes_up, bytes_down}, failed sites included) and ``cross_site_val/fedfms_results.{json,md}`` (Dice of
the final and best global models on every site's test split).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from nvflare.apis.analytix import AnalyticsDataType
from nvflare.apis.dxo import MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.widgets.streaming import AnalyticsSender
from nvflare.widgets.widget import Widget

from fedfms.core.io import write_json_atomic, write_text_atomic
from fedfms.core.wire import (
    BYTES_DOWN, BYTES_SENT, BYTES_UP, DP_DELTA, DP_EPSILON, RESULTS_FILE, ROUNDS_FILE, TEST_DICE, TRAIN_LOSS, VAL_DICE,
)

from .aggregation import AGGREGATION_NOTES, REJECTED_UPDATES
from .selection import serialized_size


def _number(value: object, spec: str, scale: float = 1.0) -> str:
    """``value / scale`` formatted with ``spec``, or "-" when it is missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return format(value / scale, spec)


def results_markdown(results: Dict[str, Dict[str, float]], sites: Sequence[str], held_out: Sequence[str] = ()) -> str:
    """Markdown table: one row per site, one column per model, cells = test Dice ('-' if missing)."""
    models = sorted({model for per_site in results.values() for model in per_site})
    lines = ["| site | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for site in sites:
        label = f"{site} (held out)" if site in held_out else site
        cells = [f"{results.get(site, {}).get(m):.4f}" if m in results.get(site, {}) else "-" for m in models]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _mb(size: Optional[int]) -> str:
    """``size`` bytes in MB, or "-" when it is missing."""
    value = _number(size, ".2f", 1e6)
    return value if value == "-" else f"{value} MB"


class JobReport(Widget):
    """Server widget writing the per-round log and the cross-site results table.

    Args:
        train_sites: the clients expected to train each round (to name the ones that sent nothing).
        held_out_sites: clients that only evaluate (marked in the results table).
        resume_from: server run folder of the crashed job this one continues ("" = none): its round
            history is kept at the start of this job's.

    The weighted Dice curve and each site's bytes up / down (tags ``bytes_up/<site>``,
    ``bytes_down/<site>``) go to the server's TensorBoard receiver as local analytics events.
    """

    def __init__(self, train_sites: Sequence[str] = (), held_out_sites: Sequence[str] = (), resume_from: str = ""):
        super().__init__()
        self.train_sites, self.held_out_sites = list(train_sites), list(held_out_sites)
        self.resume_from = resume_from
        self.resumed_marked = False
        self.sender = AnalyticsSender()
        self.run_dir: Optional[Path] = None
        self.history: List[dict] = []
        self.current: Dict[str, dict] = {}
        self.results: Dict[str, Dict[str, float]] = {}
        self.traffic: Dict[str, Dict[str, int]] = {}  # this round: site -> {BYTES_UP, BYTES_DOWN}
        self._sizes: Dict[Tuple, int] = {}  # this round: message layout -> serialized bytes

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            engine = fl_ctx.get_engine()
            self.run_dir = Path(engine.get_workspace().get_run_dir(fl_ctx.get_job_id()))
            self.sender.engine = engine
            if self.resume_from:
                previous = Path(self.resume_from) / ROUNDS_FILE
                try:
                    self.history = json.loads(previous.read_text())
                except (OSError, ValueError) as error:  # the controller stops the job with the same finding
                    self.log_error(fl_ctx, f"cannot read the crashed job's round report {previous}: {error}")
        elif event_type == AppEventType.ROUND_STARTED:
            self.current, self.traffic, self._sizes = {}, {}, {}
        elif event_type == EventType.AFTER_TASK_DATA_FILTER:
            self._record_traffic(fl_ctx, FLContextKey.TASK_DATA, BYTES_DOWN)
        elif event_type == EventType.BEFORE_TASK_RESULT_FILTER:
            self._record_traffic(fl_ctx, FLContextKey.TASK_RESULT, BYTES_UP)
        elif event_type == AppEventType.BEFORE_CONTRIBUTION_ACCEPT:
            self._record_contribution(fl_ctx)
        elif event_type == AppEventType.ROUND_DONE:
            self._close_round(fl_ctx)
        elif event_type == AppEventType.VALIDATION_RESULT_RECEIVED:
            self._record_validation(fl_ctx)
        elif event_type == EventType.END_RUN and self.results:
            self._write_results(fl_ctx)

    def _record_traffic(self, fl_ctx: FLContext, key: str, direction: str) -> None:
        """Serialized size of this round's train task (down) or training result (up) of one site. Messages
        of one layout (kind, tensor names, dtypes, shapes, meta keys) serialize to the same size, so each
        layout is serialized once a round (a FedSAM model takes seconds)."""
        if fl_ctx.get_prop(FLContextKey.TASK_NAME) != AppConstants.TASK_TRAIN:
            return
        message = fl_ctx.get_prop(key)
        peer = fl_ctx.get_peer_context()
        site = peer.get_identity_name(default="?") if peer else "?"
        try:
            dxo = from_shareable(message)
        except Exception:  # an error reply: nothing crossed but the return code
            return
        layout = (dxo.data_kind, tuple(sorted(dxo.meta)), tuple(
            (name, np.asarray(value).dtype.str, np.shape(value)) for name, value in sorted(dxo.data.items())))
        if layout not in self._sizes:
            self._sizes[layout] = serialized_size(dxo)
        self.traffic.setdefault(site, {})[direction] = self._sizes[layout]

    def _record_contribution(self, fl_ctx: FLContext) -> None:
        peer = fl_ctx.get_peer_context()
        site = peer.get_identity_name(default="?") if peer else "?"
        result = fl_ctx.get_prop(AppConstants.TRAINING_RESULT)
        try:
            dxo = from_shareable(result)
        except Exception:  # the aggregator logs malformed results itself
            return
        metrics = dxo.get_meta_prop(MetaKey.INITIAL_METRICS)
        self.current[site] = {
            "samples": dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND),
            VAL_DICE: metrics.get(VAL_DICE) if isinstance(metrics, dict) else None,
            TRAIN_LOSS: dxo.get_meta_prop(TRAIN_LOSS),
            BYTES_SENT: dxo.get_meta_prop(BYTES_SENT),
        }
        if dxo.get_meta_prop(DP_EPSILON) is not None:
            self.current[site].update({DP_EPSILON: dxo.get_meta_prop(DP_EPSILON), DP_DELTA: dxo.get_meta_prop(DP_DELTA)})

    def _close_round(self, fl_ctx: FLContext) -> None:
        current_round = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        rejected = fl_ctx.get_prop(REJECTED_UPDATES) or {}
        # the weighted Dice (the best-model criterion) counts accepted results only: a rejected result's
        # self-reported metrics are not trusted
        sites = {s: v for s, v in self.current.items() if s not in rejected and _number(v[VAL_DICE], "") != "-"
                 and _number(v["samples"], "") != "-" and v["samples"] > 0}
        total = sum(v["samples"] for v in sites.values())
        weighted = sum(v[VAL_DICE] * v["samples"] for v in sites.values()) / total if total else None
        missing = [s for s in self.train_sites if s not in self.current]
        entry = {"round": current_round, "weighted_val_dice": weighted, "sites": self.current,
                 "missing": missing, "rejected": rejected, "traffic": self.traffic}
        notes = fl_ctx.get_prop(AGGREGATION_NOTES)
        if notes:
            entry["aggregation"] = notes
        if self.resume_from and not self.resumed_marked:  # the first round this job trained
            entry["resumed_from"] = self.resume_from
            self.resumed_marked = True
        self.history.append(entry)
        parts = [
            f"{s}: loss {_number(v[TRAIN_LOSS], '.4f')} Dice {_number(v[VAL_DICE], '.4f')} "
            f"up {_mb(self.traffic.get(s, {}).get(BYTES_UP))} down {_mb(self.traffic.get(s, {}).get(BYTES_DOWN))}" + (f" epsilon {_number(v[DP_EPSILON], '.3g')}" if DP_EPSILON in v else "")
            for s, v in sorted(self.current.items())
        ]
        line = f"round {current_round}: " + " | ".join(parts)
        if weighted is not None:
            line += f" | weighted Dice {weighted:.4f}"
        self.log_info(fl_ctx, line)
        if missing:
            self.log_warning(fl_ctx, f"round {current_round}: no result from {', '.join(missing)} (failed or timed out)")
        if rejected:
            self.log_warning(fl_ctx, f"round {current_round}: not aggregated: {', '.join(sorted(rejected))}")
        if weighted is not None:
            self.sender.add("weighted_val_dice", weighted, AnalyticsDataType.SCALAR, global_step=int(current_round))
        for site, traffic in sorted(self.traffic.items()):
            for direction, size in traffic.items():
                self.sender.add(f"{direction}/{site}", size, AnalyticsDataType.SCALAR, global_step=int(current_round))
        write_json_atomic(self.run_dir / ROUNDS_FILE, self.history)

    def _record_validation(self, fl_ctx: FLContext) -> None:
        owner = fl_ctx.get_prop(AppConstants.MODEL_OWNER)
        site = fl_ctx.get_prop(AppConstants.DATA_CLIENT)
        result = fl_ctx.get_prop(AppConstants.VALIDATION_RESULT)
        if result is None or result.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            self.log_warning(fl_ctx, f"cross-site evaluation of {owner} on {site} failed")
            return
        self.results.setdefault(str(site), {})[str(owner)] = float(from_shareable(result).data[TEST_DICE])

    def _write_results(self, fl_ctx: FLContext) -> None:
        sites = sorted(set(self.train_sites) | set(self.held_out_sites) | set(self.results))
        folder = self.run_dir / AppConstants.CROSS_VAL_DIR
        write_json_atomic(folder / f"{RESULTS_FILE}.json", self.results)
        table = results_markdown(self.results, sites, self.held_out_sites)
        write_text_atomic(folder / f"{RESULTS_FILE}.md", table)
        self.log_info(fl_ctx, "cross-site test Dice of the global models:\n" + table)

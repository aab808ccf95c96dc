"""ScatterAndGather restricted to the training sites (leave-one-site-out), that stops waiting for sites that
went missing and can resume a job lost to a server crash."""

from __future__ import annotations

import json
import os
import time
from typing import List, Optional, Sequence, Set

from nvflare.apis.client import Client
from nvflare.apis.controller_spec import Task, TaskCompletionStatus
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather

from fedfms.core.wire import ROUNDS_FILE


def resume_round(resume_from: str) -> int:
    """The first round a resumed job trains: one after the last round in ``resume_from``'s round report
    (``fedfms_rounds.json`` of the crashed job's server run folder). ValueError naming the file otherwise."""
    path = os.path.join(resume_from, ROUNDS_FILE)
    try:
        with open(path) as handle:
            rounds = json.load(handle)
        return int(rounds[-1]["round"]) + 1
    except (OSError, ValueError, LookupError, TypeError) as error:
        raise ValueError(f"cannot resume from {resume_from}: its round report {path} is missing or unreadable "
                         f"({error}); give the crashed job's server run folder (WORKSPACE/JOB_ID)") from error


class TrainingSitesScatterAndGather(ScatterAndGather):
    """NVFlare's ScatterAndGather (FedAvg rounds), sending train tasks only to ``train_sites``.

    In leave-one-site-out the held-out site joins the job as a client so that cross-site evaluation
    scores the final and best global models on it, but it never trains: ScatterAndGather itself has
    no target list and would broadcast to every connected client.

    Missing sites: a training site that sent nothing in a round (dead, hung, or slower than
    ``train_timeout`` / ``wait_time_after_min_received``) is *absent*; in the next rounds it still gets
    the train task, but once every other site answered (and at least ``min_clients``), the round ends
    without waiting for it. A result from it (in time, or late for an earlier round) makes it present
    again. So a dead site costs one wait, not one per round.

    Resume: with ``resume_from`` (a crashed job's server run folder), training starts at the round after
    the last one in its round report and ends at the same final round (``num_rounds`` is the job's
    total); the persistor loads that folder's global model (see ``TransmittedModelPersistor``).

    All other behaviour (min_clients, train_timeout, error tolerance, persistence) is ScatterAndGather's.

    Args:
        train_sites: client names that train; None or empty = every client (plain ScatterAndGather).
        resume_from: server run folder of the job to continue ("" = a new job from round 0).
        args, kwargs: ScatterAndGather's arguments (both declared so that NVFlare's Job API writes them
            into the job config).
    """

    def __init__(self, *args, train_sites: Optional[Sequence[str]] = None, resume_from: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.train_sites: List[str] = list(train_sites or [])
        self.resume_from = resume_from
        self.absent: Set[str] = set()

    def start_controller(self, fl_ctx: FLContext) -> None:
        if self.resume_from:
            try:
                start = resume_round(self.resume_from)
            except ValueError as error:
                self.system_panic(str(error), fl_ctx)
                return
            total = self._start_round + self._num_rounds
            if start >= total:
                self.system_panic(f"nothing to resume: {self.resume_from} already finished round {start - 1} "
                                  f"of a {total}-round job", fl_ctx)
                return
            self.log_info(fl_ctx, f"resuming {self.resume_from} at round {start} of {total}")
            # ScatterAndGather keeps its round range in private attributes, read from here on (NVFlare 2.9;
            # tests/federated/test_library_internals.py fails if that changes)
            self._start_round, self._num_rounds = start, total - start
        super().start_controller(fl_ctx)

    def broadcast_and_wait(self, task: Task, fl_ctx: FLContext, targets=None, min_responses: int = 1,
                           wait_time_after_min_received: int = 0, abort_signal=None):
        if task.name != self.train_task_name:
            return super().broadcast_and_wait(task, fl_ctx, targets, min_responses, wait_time_after_min_received,
                                              abort_signal)
        if self.train_sites:
            targets = self.train_sites
            # ScatterAndGather counts every connected client when deciding whether a failed site can
            # be tolerated; only the training sites can answer. No public API sets this count (NVFlare
            # 2.9): tests/federated/test_library_internals.py fails if the attribute goes away.
            self._current_num_targets = len(self.train_sites)
        expected = {t.name if isinstance(t, Client) else t for t in targets} if targets else \
            {c.name for c in self._engine.get_clients()}
        awaited = expected - self.absent
        if self.absent:
            self.log_warning(fl_ctx, f"round {self._current_round}: not waiting for {sorted(self.absent & expected)} "
                                     "(no result in an earlier round) once the other sites answered")
        self.broadcast(task, fl_ctx, targets, min_responses, wait_time_after_min_received)
        # Controller.broadcast_and_wait's wait (WFCommServer.wait_for_task), plus: stop once every site
        # that is not absent answered and min_responses are in
        while task.completion_status is None:
            if abort_signal is not None and abort_signal.triggered:
                self.cancel_task(task, completion_status=TaskCompletionStatus.ABORTED)
                break
            answered = self._answered(task)
            if self.absent & expected and awaited <= answered and len(answered) >= min_responses:
                self.cancel_task(task, completion_status=TaskCompletionStatus.OK)
                break
            time.sleep(self._task_check_period)
        answered = self._answered(task)
        missed = expected - answered
        returned = self.absent & answered
        if returned:
            self.log_info(fl_ctx, f"round {self._current_round}: {sorted(returned)} answered again")
        if missed:
            self.log_warning(fl_ctx, f"round {self._current_round}: no result from {sorted(missed)}; later rounds "
                                     "will not wait for them unless they return")
        self.absent = missed

    @staticmethod
    def _answered(task: Task) -> Set[str]:
        return {ct.client.name for ct in task.client_tasks if ct.result_received_time}

    def process_result_of_unknown_task(self, client: Client, task_name, client_task_id, result: Shareable,
                                       fl_ctx: FLContext) -> None:
        """A late result (of a round that ended without it): its site is alive again."""
        if task_name == self.train_task_name and client.name in self.absent:
            self.log_info(fl_ctx, f"late result from {client.name}: waiting for it again from the next round")
            self.absent.discard(client.name)
        super().process_result_of_unknown_task(client, task_name, client_task_id, result, fl_ctx)

"""ScatterAndGather restricted to the training sites (leave-one-site-out)."""

from __future__ import annotations

from typing import List, Optional, Sequence

from nvflare.apis.fl_context import FLContext
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather


class TrainingSitesScatterAndGather(ScatterAndGather):
    """NVFlare's ScatterAndGather (FedAvg rounds), sending train tasks only to ``train_sites``.

    In leave-one-site-out the held-out site joins the job as a client so that cross-site evaluation
    scores the final and best global models on it, but it never trains: ScatterAndGather itself has
    no target list and would broadcast to every connected client. All other behaviour (min_clients,
    train_timeout, error tolerance, persistence) is ScatterAndGather's.

    Args:
        train_sites: client names that train; None or empty = every client (plain ScatterAndGather).
        args, kwargs: ScatterAndGather's arguments (both declared so that NVFlare's Job API writes them
            into the job config).
    """

    def __init__(self, *args, train_sites: Optional[Sequence[str]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_sites: List[str] = list(train_sites or [])

    def broadcast_and_wait(self, task, fl_ctx: FLContext, targets=None, min_responses: int = 1,
                           wait_time_after_min_received: int = 0, abort_signal=None):
        if self.train_sites and task.name == self.train_task_name:
            targets = self.train_sites
            # ScatterAndGather counts every connected client when deciding whether a failed site can
            # be tolerated; only the training sites can answer. No public API sets this count (NVFlare
            # 2.9): tests/federated/test_library_internals.py fails if the attribute goes away.
            self._current_num_targets = len(self.train_sites)
        return super().broadcast_and_wait(
            task, fl_ctx, targets, min_responses, wait_time_after_min_received, abort_signal
        )

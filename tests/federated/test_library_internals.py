"""Library internals fedfms still relies on, each checked here so that an upgrade that changes it fails
loudly instead of silently changing behaviour (the README lists them with their reasons)."""

from __future__ import annotations

import inspect

from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather

from fedfms.runtime.controller import TrainingSitesScatterAndGather


def test_scatter_and_gather_counts_the_round_targets_in_current_num_targets():
    """TrainingSitesScatterAndGather sets ScatterAndGather._current_num_targets to the number of training
    sites (NVFlare 2.9 sets it to every connected client and offers no public setter); the count decides
    whether a failed site can be tolerated while min_clients are still reachable."""
    assert "self._current_num_targets = len(self._engine.get_clients())" in inspect.getsource(ScatterAndGather.control_flow)
    tolerance = inspect.getsource(ScatterAndGather._accept_train_result)
    assert "num_targets = 0 if is_unknown_task else self._current_num_targets" in tolerance
    controller = TrainingSitesScatterAndGather(train_sites=["A", "B"], min_clients=1)
    assert controller._current_num_targets == 0 and controller.train_sites == ["A", "B"]

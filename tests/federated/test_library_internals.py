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


def test_intime_model_selector_keeps_running_sums_and_decides_in_before_aggregate():
    """AcceptedModelSelector calls IntimeModelSelector._before_accept / _before_aggregate and adjusts its
    running sums (validation_metric_weighted_sum, raw_validation_metric_weighted_sum,
    validation_metric_sum_of_weights) to withdraw rejected results; NVFlare 2.9 has no public API for it."""
    from nvflare.app_common.widgets.intime_model_selector import IntimeModelSelector

    accept = inspect.getsource(IntimeModelSelector._before_accept)
    for line in ("self.validation_metric_weighted_sum += validation_metric * weight",
                 "self.raw_validation_metric_weighted_sum += raw_validation_metric * weight",
                 "self.validation_metric_sum_of_weights += weight"):
        assert line in accept
    decide = inspect.getsource(IntimeModelSelector._before_aggregate)
    assert "self.validation_metric_weighted_sum / self.validation_metric_sum_of_weights" in decide
    assert "AppEventType.GLOBAL_BEST_MODEL_AVAILABLE" in decide


def test_scatter_and_gather_reads_its_round_range_from_start_round_and_num_rounds():
    """TrainingSitesScatterAndGather(resume_from=...) sets ScatterAndGather._start_round / _num_rounds in
    start_controller, before ScatterAndGather's own start_controller publishes START_ROUND and its
    control_flow loops from _start_round to _start_round + _num_rounds: the round to resume at is known
    only at run time (it is read from the server's files), after the constructor took start_round."""
    init = inspect.getsource(ScatterAndGather.__init__)
    assert "self._num_rounds = num_rounds" in init and "self._start_round = start_round" in init
    start = inspect.getsource(ScatterAndGather.start_controller)
    assert "fl_ctx.set_prop(AppConstants.START_ROUND, self._start_round" in start
    flow = inspect.getsource(ScatterAndGather.control_flow)
    assert "self._current_round = self._start_round" in flow
    assert "while self._current_round < self._start_round + self._num_rounds:" in flow

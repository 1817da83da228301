"""Ray Tune's ``OptunaSearch`` as our searches use it (imported by :func:`pipeline.tune.run_search`).

A module of its own so that a grid trial, which imports :mod:`pipeline.tune`, does not import
Optuna (part of a fresh worker's start: docs/grid.md).
"""
from __future__ import annotations

from typing import Optional

from ray.tune.search.optuna import OptunaSearch

from .tune import SEARCH_STATUS, search_status


class AttnlabOptunaSearch(OptunaSearch):
    """Ray's ``OptunaSearch``, telling Optuna how a trial ended: a trial the scheduler stopped
    early is PRUNED (its intermediate values stay; its truncated score is not a final value),
    and each Optuna trial carries ``attnlab.status`` and Tune's trial id as user attributes."""

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        status = search_status(result, error)
        if ot_trial is not None and trial_id not in self._completed_trials:
            try:
                ot_trial.set_user_attr(SEARCH_STATUS, status)
                ot_trial.set_user_attr("attnlab.tune_trial_id", trial_id)
            except Exception:  # noqa: BLE001 - an attribute is not worth losing the result
                pass
        if status == "stopped_early":
            result = None  # no value, no error: Optuna records it PRUNED
        super().on_trial_complete(trial_id, result=result, error=error)

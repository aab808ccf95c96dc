"""The paper's study protocol: leave-one-site-out training of every method (federated with NVFlare,
centralized on the pooled source sites), evaluation on the unseen site, tables and plots beside the
paper's Table 1. Entry point: ``tools/run_study.py`` over :func:`run_study`."""

from .plan import Site, StudyError, StudyRun, StudySettings, discover_sites, plan_study
from .study import StudyOutcome, run_study

__all__ = ["Site", "StudyError", "StudyOutcome", "StudyRun", "StudySettings", "discover_sites", "plan_study", "run_study"]

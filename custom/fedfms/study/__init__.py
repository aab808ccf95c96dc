"""The paper's study protocol: leave-one-site-out training of every method (federated with NVFlare,
centralized on the pooled source sites), evaluation on the unseen site, tables and plots beside the
paper's Table 1. Entry point: ``tools/run_study.py`` over ``fedfms.study.study.run_study`` (not
re-exported here: it imports fedfms.reporting, whose study tables import this package's paper numbers)."""

from .methods import METHODS, Method, get_method
from .plan import Site, StudyError, StudyRun, StudySettings, discover_sites, plan_study
from .profiles import PROFILES, Profile, get_profile

__all__ = [
    "METHODS", "PROFILES", "Method", "Profile", "Site", "StudyError", "StudyRun", "StudySettings",
    "discover_sites", "get_method", "get_profile", "plan_study",
]

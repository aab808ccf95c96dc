"""The registries everything above the networks and data reads: methods (bundle, network, federated or
centralized, the paper's batch sizes), datasets (derived from the data preparers) and training profiles
(paper, demo), plus the paper's published numbers. Each default lives here once."""

from .datasets import Dataset, dataset_names, get_dataset
from .methods import Method, column_label, get_method, method_names, paper_row, register_bundle
from .profiles import PAPER, PROFILES, Profile, add_compute_options, add_profile_option, bundle_overrides, compute_overrides, get_profile

__all__ = [
    "PAPER", "PROFILES", "Dataset", "Method", "Profile", "add_compute_options", "add_profile_option", "bundle_overrides", "column_label",
    "compute_overrides",
    "dataset_names", "get_dataset", "get_method", "get_profile", "method_names", "paper_row", "register_bundle",
]

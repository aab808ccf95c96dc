"""Federated learning with NVIDIA FLARE: the site executor that runs a MONAI bundle, the one place
that selects the transmitted tensors, the server persistor / controller / report, the bad-update-
rejecting (FedAvg or FedSCA) aggregator, the half-precision filters, per-site configuration, and the
job generator."""

from .aggregation import AGGREGATIONS, GuardedAggregator
from .jobs import DATASETS, METHOD_BUNDLES, JobSettings, client_name, paper_jobs, write_job
from .selection import TransmissionError, check_incoming, describe, select_outgoing, serialized_size, transmitted_names
from .site_config import SiteConfig, SiteConfigError, resolve_sam_checkpoint, resolve_site_config

__all__ = [
    "AGGREGATIONS", "GuardedAggregator", "DATASETS", "METHOD_BUNDLES", "JobSettings", "SiteConfig", "SiteConfigError", "TransmissionError",
    "check_incoming", "client_name", "describe", "paper_jobs", "resolve_sam_checkpoint",
    "resolve_site_config", "select_outgoing", "serialized_size", "transmitted_names", "write_job",
]

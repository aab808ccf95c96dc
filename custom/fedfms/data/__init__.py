"""Dataset preparation: one preparer per public release (registered in :mod:`fedfms.data.preparation`),
a shared site writer (:mod:`fedfms.data.writer`) and the synthetic demo generator."""

from fedfms.data.preparation import (
    Case,
    CaseExcluded,
    DataError,
    Preparer,
    RawCase,
    SiteError,
    available_datasets,
    broken_case,
    get_preparer,
    load_nifti,
    load_volume_pair,
    read_error,
    register,
)
from fedfms.data.writer import (
    DEFAULT_SEED,
    format_summary,
    prepare_dataset,
    prepare_site,
    split_groups,
    terminate_as_exit,
)

__all__ = [
    "DEFAULT_SEED", "Case", "CaseExcluded", "DataError", "Preparer", "RawCase", "SiteError", "available_datasets",
    "broken_case", "format_summary", "get_preparer", "load_nifti", "load_volume_pair", "prepare_dataset",
    "prepare_site", "read_error", "register", "split_groups", "terminate_as_exit",
]

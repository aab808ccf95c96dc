"""The study's methods: three federated (NVFlare jobs) and their centralized counterparts (one bundle
trained on the pooled source sites), and how each is named in tables and in the paper's Table 1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional


@dataclass(frozen=True)
class Method:
    """One column of the study.

    name: command-line name ("fedsam", "sam", ...); bundle: folder under bundles/; federated: trained by
    an NVFlare job (else by the bundle's train config on the pooled source sites); job_method: the
    fedfms.federated.jobs method whose settings (batch size, overrides) this method shares; label: the
    paper's name; uses_sam: built on SAM weights (so the -PT ablation and model_type apply).
    """

    name: str
    bundle: str
    federated: bool
    job_method: str
    label: str
    uses_sam: bool


#: Registry, in the order the paper's Table 1 lists them (U-Net first, then SAM, then MSA).
METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("fedunet", "unet", True, "fedunet", "FedU-Net", False),
    Method("unet", "unet", False, "fedunet", "U-Net", False),
    Method("fedsam", "sam", True, "fedsam", "FedSAM", True),
    Method("sam", "sam", False, "fedsam", "SAM", True),
    Method("fedmsa", "msa", True, "fedmsa", "FedMSA", True),
    Method("msa", "msa", False, "fedmsa", "MSA", True),
)}

#: Encoders the paper reports, and the suffix its row names carry ("FedMSA-L").
_PAPER_ENCODER_SUFFIX = {"vit_b": "", "vit_l": "-L"}


def get_method(name: str) -> Method:
    """The registered method ``name``; ValueError listing the choices otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {list(METHODS)}")
    return METHODS[name]


def column_label(method: Method, pretrained: bool, model_type: str) -> str:
    """Our column name: the paper's style ("FedSAM", "MSA-L", "FedMSA (-PT)"); encoders the paper does
    not use are named in brackets ("FedMSA (-PT) [vit_tiny]")."""
    if not method.uses_sam:
        return method.label
    suffix = _PAPER_ENCODER_SUFFIX.get(model_type, "")
    label = method.label + suffix + ("" if pretrained else " (-PT)")
    return label if model_type in _PAPER_ENCODER_SUFFIX else f"{label} [{model_type}]"


def paper_row(method: Method, pretrained: bool, model_type: str) -> Optional[str]:
    """The row of the paper's Table 1 to compare with, or None when the paper has none.

    SAM-based methods on encoders the paper did not use (vit_tiny) are compared with the paper's ViT-B
    row; tables say which encoder ran. The centralized U-Net has no row (the paper's baselines are
    FedU-Net and FednnU-Net only).
    """
    if not method.uses_sam:
        return method.label if method.federated else None
    if model_type == "vit_h":
        return None
    suffix = _PAPER_ENCODER_SUFFIX.get(model_type, "")
    if suffix and not pretrained:
        return None  # the paper has no -L -PT rows
    return method.label + suffix + ("" if pretrained else " (-PT)")

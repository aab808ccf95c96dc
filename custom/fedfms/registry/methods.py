"""The methods fedfms trains and compares: the one registry jobs, the study, the CLIs and reports read.

A method is a MONAI bundle (``bundles/<bundle>``) trained one of two ways: federated, as an NVFlare job
in which every site trains on its own data (``fed<bundle>``, e.g. "fedmsa", the paper's "FedMSA"), or
centralized, the bundle's train config on the pooled source sites (``<bundle>``, e.g. "msa", "MSA").
``register_bundle`` registers both at once: adding a method is that one call (plus the bundle folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

from torch import nn

from fedfms.networks import MSASegmenter, SAMSegmenter

FEDERATED_PREFIX, FEDERATED_LABEL_PREFIX = "fed", "Fed"


@dataclass(frozen=True)
class Method:
    """One way of training one bundle (a column of the paper's Table 1).

    name: command-line name ("fedmsa", "msa"); label: the paper's name ("FedMSA", "MSA"); bundle: folder
    under bundles/; federated: trained by an NVFlare job (else by the bundle's train config on the pooled
    source sites); uses_sam: built on SAM weights (model_type, the SAM checkpoint and the -PT ablation
    apply); network: the fedfms network class the bundle's ``network_def`` builds (None: a MONAI network);
    paper_batch_sizes: the paper's batch size per dataset, key None for every other dataset (empty: the
    bundle's default).
    planned: the network is planned from the data (nnU-Net): a federated job first has every training
    site send a summary of its data (nnU-Net's fingerprint) and the server plan the network once, then
    trains that network; a centralized run plans on the pooled source sites (the bundle does).
    own_recipe: the bundle trains with its own recipe's optimizer, learning rate and precision
    (nnU-Net's SGD, 1e-2, its own autocast on CUDA): a profile's learning rate, meant for the paper's
    Adam, and its amp / amp_dtype do not apply to it.
    lr_schedule: the bundle's learning-rate schedule has a length, its ``lr_schedule_epochs`` option:
    every run sets it to rounds x local epochs, so a federated schedule spans the whole federation.
    profile_overrides: bundle overrides of this method under a profile, by profile name (e.g. the CPU
    demo's lighter nnU-Net settings), applied after the profile's.
    privacy_scope: the NVFlare privacy scope its jobs declare in meta.json; each site decides in its own
    local/privacy.json what a scope lets out (shipped scopes: ``fedfms.runtime.privacy.EXAMPLE_SCOPES``).
    """

    name: str
    label: str
    bundle: str
    federated: bool
    uses_sam: bool = False
    network: Optional[type[nn.Module]] = None
    paper_batch_sizes: Mapping[Optional[str], int] = field(default_factory=dict, hash=False)
    planned: bool = False
    own_recipe: bool = False
    lr_schedule: bool = False
    profile_overrides: Mapping[str, Mapping[str, object]] = field(default_factory=dict, hash=False)
    privacy_scope: str = "full_model"

    def batch_size(self, dataset: str) -> Optional[int]:
        """The paper's batch size for ``dataset``, or None for the bundle's default."""
        return self.paper_batch_sizes.get(dataset, self.paper_batch_sizes.get(None))


#: name -> method, in registration order (the order tables list them)
METHODS: Dict[str, Method] = {}


def register_bundle(bundle: str, label: str, *, uses_sam: bool = False, network: Optional[type[nn.Module]] = None,
                    paper_batch_sizes: Optional[Mapping[Optional[str], int]] = None, planned: bool = False,
                    own_recipe: bool = False, lr_schedule: bool = False,
                    profile_overrides: Optional[Mapping[str, Mapping[str, object]]] = None,
                    privacy_scope: str = "full_model") -> Tuple[Method, Method]:
    """Register the federated method ``fed<bundle>`` (label ``Fed<label>``) and the centralized
    ``<bundle>`` (label ``<label>``) of ``bundles/<bundle>``; return (federated, centralized).
    The keyword arguments are the ``Method`` fields of both; privacy_scope: the scope the federated
    method's jobs declare ("full_model": the site lets out any tensor; a method that sends less names a
    tighter scope). ValueError if either name is taken."""
    methods = tuple(
        Method(prefix + bundle, label_prefix + label, bundle, federated, uses_sam, network, dict(paper_batch_sizes or {}),
               planned, own_recipe, lr_schedule, {k: dict(v) for k, v in (profile_overrides or {}).items()},
               privacy_scope)
        for prefix, label_prefix, federated in ((FEDERATED_PREFIX, FEDERATED_LABEL_PREFIX, True), ("", "", False))
    )
    taken = [m.name for m in methods if m.name in METHODS]
    if taken:
        raise ValueError(f"methods {taken} are already registered")
    METHODS.update((m.name, m) for m in methods)
    return methods


def get_method(name: str) -> Method:
    """The registered method ``name``; ValueError listing the choices otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {list(METHODS)}")
    return METHODS[name]


def network_class(bundle: str) -> type[nn.Module]:
    """The fedfms network class of ``bundle`` ("sam", "msa"); ValueError for bundles built on MONAI networks."""
    classes = {m.bundle: m.network for m in METHODS.values() if m.network is not None}
    if bundle not in classes:
        raise ValueError(f"bundle {bundle!r} has no fedfms network; bundles with one: {sorted(classes)}")
    return classes[bundle]


def method_names(federated: Optional[bool] = None) -> List[str]:
    """Registered method names in order; only the federated (True) or centralized (False) ones if given."""
    return [m.name for m in METHODS.values() if federated is None or m.federated == federated]


# The paper's Table 1 order: conventional baselines first (U-Net, nnU-Net), then SAM, then MSA. Batch
# sizes: the reference code's (FedSAM 6, nuclei 4; FedMSA 4, brain 8); U-Net uses its bundle's default,
# nnU-Net its plan's. nnU-Net in the CPU demo: no mirroring test-time augmentation (4 passes per patch),
# and nnU-Net's fixed-length epochs (100 batches; its own are 250) instead of one pass over the site's
# data: one pass is 11-31 SGD steps on the demo sites, and two rounds of averaging such models left
# FednnU-Net predicting no prostate at all (3D Dice 0 on UCL, with one-pass epochs).
# Privacy scopes: FedMSA sends adapters, decoder and head only ("fedmsa"); FedSAM and FedU-Net their
# whole trainable state ("full_model"); FednnU-Net that and, before training, its nnU-Net fingerprint
# ("fednnunet").
register_bundle("unet", "U-Net")
register_bundle("nnunet", "nnU-Net", planned=True, own_recipe=True, lr_schedule=True,
                profile_overrides={"demo": {"use_mirroring": False, "iterations_per_epoch": 100}}, privacy_scope="fednnunet")
register_bundle("sam", "SAM", uses_sam=True, network=SAMSegmenter, paper_batch_sizes={None: 6, "nuclei": 4})
register_bundle("msa", "MSA", uses_sam=True, network=MSASegmenter, paper_batch_sizes={None: 4, "brain": 8},
                privacy_scope="fedmsa")

#: Encoders the paper reports, and the suffix its row names carry ("FedMSA-L").
PAPER_ENCODER_SUFFIX = {"vit_b": "", "vit_l": "-L"}


def column_label(method: Method, pretrained: bool, model_type: str) -> str:
    """Our column name: the paper's style ("FedSAM", "MSA-L", "FedMSA (-PT)"); encoders the paper does
    not use are named in brackets ("FedMSA (-PT) [vit_tiny]")."""
    if not method.uses_sam:
        return method.label
    suffix = PAPER_ENCODER_SUFFIX.get(model_type, "")
    label = method.label + suffix + ("" if pretrained else " (-PT)")
    return label if model_type in PAPER_ENCODER_SUFFIX else f"{label} [{model_type}]"


def paper_row(method: Method, pretrained: bool, model_type: str) -> Optional[str]:
    """The row of the paper's Table 1 to compare with, or None when the paper has none.

    SAM-based methods on encoders the paper did not use (vit_tiny) are compared with the paper's ViT-B
    row; tables say which encoder ran. Centralized conventional baselines have no row (the paper's
    baselines are FedU-Net and FednnU-Net only).
    """
    if not method.uses_sam:
        return method.label if method.federated else None
    if model_type == "vit_h":
        return None  # the paper has no ViT-H rows
    suffix = PAPER_ENCODER_SUFFIX.get(model_type, "")
    if suffix and not pretrained:
        return None  # the paper has no -L -PT rows
    return method.label + suffix + ("" if pretrained else " (-PT)")

"""Which runs a leave-one-site-out study makes, and with which data.

For every held-out (unseen) site, every method trains on the other sites of the dataset (the source
sites): federated methods as one NVFlare job with that site held out, centralized ones on the pooled
source datalists. SAM-based methods run with the given SAM checkpoint and, for the -PT ablation,
without one. Nothing here trains: ``plan_study`` only lists the runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from fedfms.registry import PAPER, Method, Profile, bundle_overrides, column_label, get_dataset, get_method, paper_row


class StudyError(ValueError):
    """The study cannot be planned: missing data, unknown site or method, bad settings."""


@dataclass(frozen=True)
class Site:
    """A prepared site: its folder name under DATA_ROOT/DATASET, its datalist, the site name its
    datalist's metadata gives (the key of per-site evaluation results), and whether it is synthetic."""

    folder: str
    datalist: Path
    name: str
    synthetic: bool
    num_test: int


@dataclass(frozen=True)
class StudySettings:
    """Everything that defines a study.

    methods: names of ``fedfms.registry`` methods; profile: the training settings (a registered profile
    with the command line's overrides); held_out: unseen sites (folder names), empty = every site in turn;
    no_pretraining: add the -PT ablation of the SAM-based methods when a checkpoint is given (without a
    checkpoint every SAM-based run is already -PT); sam_checkpoint: official SAM weights or None;
    threads: simulator threads (None = one per training site: the held-out site gets no client); device:
    bundle device (None = the bundles' default, cuda:0 if available).
    """

    dataset: str
    data_root: Path
    out: Path
    methods: Tuple[str, ...]
    profile: Profile = PAPER
    held_out: Tuple[str, ...] = ()
    no_pretraining: bool = False
    sam_checkpoint: Optional[Path] = None
    threads: Optional[int] = None
    device: Optional[str] = None
    seed: int = 1337
    command: str = ""

    def as_json(self) -> Dict[str, object]:
        """The settings as JSON-ready values (paths as strings)."""
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass(frozen=True)
class StudyRun:
    """One trained model of the study.

    name: folder under OUT/runs/; pretrained: SAM weights from the checkpoint (False = -PT, None for
    U-Net); sources: the training sites; evaluated: every site the model is tested on (held-out first).
    """

    name: str
    method: Method
    held_out: Site
    sources: Tuple[Site, ...]
    pretrained: Optional[bool]
    label: str
    paper_row: Optional[str]
    settings: Dict[str, object] = field(compare=False)

    @property
    def evaluated(self) -> Tuple[Site, ...]:
        return (self.held_out, *self.sources)

    @property
    def training_datalists(self) -> List[Path]:
        """The source sites' datalists: pooled for a centralized run, one per client for a federated one."""
        return [s.datalist for s in self.sources]


def discover_sites(data_root: Path, dataset: str) -> List[Site]:
    """Prepared sites of ``dataset`` under ``data_root`` (folders with a datalist.json), in the dataset's
    registered order, then any other folder alphabetically. StudyError if fewer than two exist."""
    folder = Path(data_root) / dataset
    if not folder.is_dir():
        raise StudyError(f"{folder} does not exist: prepare the data first (tools/prepare_data.py {dataset} "
                         f"--src ... --out {data_root}, or tools/make_demo_data.py --out {data_root} for prostate)")
    found = {p.parent.name: p for p in folder.glob("*/datalist.json") if not p.parent.name.startswith(".")}
    registered = get_dataset(dataset).sites
    order = [s for s in registered if s in found] + sorted(set(found) - set(registered))
    sites = []
    for name in order:
        path = found[name]
        try:
            content = json.loads(path.read_text())
            meta = content["metadata"]
            sites.append(Site(name, path.resolve(), str(meta.get("site", name)), bool(meta.get("synthetic", False)),
                              len(content["test"])))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise StudyError(f"{path}: not a prepared datalist (expected 'metadata' and 'test'): {err}") from err
    if len(sites) < 2:
        raise StudyError(f"{folder}: leave-one-site-out needs at least two prepared sites, found {[s.folder for s in sites]}")
    return sites


def pretraining_variants(method: Method, settings: StudySettings) -> List[Optional[bool]]:
    """[True] with a checkpoint, plus False for the -PT ablation; [False] without a checkpoint (the SAM
    weights are then random: the run is -PT whatever the flag says); [None] for U-Net."""
    if not method.uses_sam:
        return [None]
    if settings.sam_checkpoint is None:
        return [False]
    return [True, False] if settings.no_pretraining else [True]


def run_name(method: Method, pretrained: Optional[bool], held_out: Site) -> str:
    """Folder name of a run under OUT/runs/: METHOD[-pt]__HELDOUT."""
    return f"{method.name}{'-pt' if pretrained is False else ''}__{held_out.folder}"


def _run_settings(settings: StudySettings, method: Method, pretrained: Optional[bool], held_out: Site,
                  sources: Sequence[Site]) -> Dict[str, object]:
    """What determines a run's result: a finished run is reused (--resume) only if this is unchanged."""
    profile = settings.profile
    values: Dict[str, object] = {
        "dataset": settings.dataset, "method": method.name, "held_out": held_out.folder,
        "sources": [s.folder for s in sources], "datalists": [str(s.datalist) for s in (held_out, *sources)],
        "image_size": profile.image_size, "rounds": profile.rounds, "local_epochs": profile.local_epochs,
        "batch_size": profile.batch_size, "learning_rate": profile.learning_rate, "checkpoint": profile.checkpoint,
        "seed": settings.seed,
        # everything else the bundle trains with (mixed precision, a method's own settings under the
        # profile, e.g. nnU-Net's epoch length in the demo), so changing any of it reruns the run
        "bundle": bundle_overrides(method, get_dataset(settings.dataset), profile),
    }
    if method.uses_sam:
        values.update(model_type=profile.model_type, pretrained=pretrained,
                      sam_checkpoint=str(settings.sam_checkpoint) if pretrained else None)
    return values


def plan_study(settings: StudySettings, sites: Sequence[Site]) -> List[StudyRun]:
    """The runs of the study, grouped by held-out site (in site order), then in the order of
    ``settings.methods``, pretrained before -PT. StudyError for unknown methods or held-out sites."""
    try:
        methods = [get_method(m) for m in settings.methods]
    except ValueError as err:
        raise StudyError(str(err)) from err
    if not methods:
        raise StudyError("no methods selected")
    by_folder = {s.folder: s for s in sites}
    by_lower = {s.folder.lower(): s for s in sites}
    unknown = [h for h in settings.held_out if h.lower() not in by_lower]
    if unknown:
        raise StudyError(f"held-out sites {unknown} are not prepared sites of {settings.dataset} under "
                         f"{settings.data_root}: {list(by_folder)}")
    held = [by_lower[h.lower()] for h in settings.held_out] if settings.held_out else list(sites)
    runs = []
    for unseen in dict.fromkeys(held):  # keeps the order, drops repeats
        sources = tuple(s for s in sites if s != unseen)
        for method in dict.fromkeys(methods):
            for pretrained in pretraining_variants(method, settings):
                runs.append(StudyRun(
                    name=run_name(method, pretrained, unseen), method=method, held_out=unseen, sources=sources,
                    pretrained=pretrained, label=column_label(method, bool(pretrained), settings.profile.model_type),
                    paper_row=paper_row(method, bool(pretrained), settings.profile.model_type),
                    settings=_run_settings(settings, method, pretrained, unseen, sources)))
    return runs

"""The whole leave-one-site-out study: plan, run (or resume) every run, write tables and plots.

    OUT/study.json        settings, command, planned runs (rewritten at the start)
    OUT/runs/<name>/      one folder per run (fedfms.study.runs)
    OUT/results.{md,csv,json}, OUT/plots/   written at the end from every published run record
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from fedfms.core.io import write_json_atomic
from fedfms.registry import get_method
from fedfms.registry.methods import PAPER_ENCODER_SUFFIX
from fedfms.reporting.study_plots import plot_learning_curves, plot_site_bars
from fedfms.reporting.study_tables import result_rows, write_results

from .plan import StudyRun, StudySettings, discover_sites, plan_study
from .runs import FINISHED, RunContext, execute_run, is_reusable, read_record

log = logging.getLogger("fedfms.study")


@dataclass
class StudyOutcome:
    """What a study produced: its runs, their records (same order), the result files, the failures."""

    runs: List[StudyRun]
    records: List[dict]
    files: List[Path]
    seconds: float

    @property
    def failures(self) -> List[dict]:
        return [r for r in self.records if r.get("status") != FINISHED]


def data_labels(synthetic: bool, settings: StudySettings) -> List[str]:
    """Warnings every result file carries: synthetic data, random SAM weights, a non-paper encoder."""
    labels = []
    if synthetic:
        labels.append("SYNTHETIC DATA (the datalists' metadata say synthetic: true): not the paper's datasets")
    uses_sam = any(get_method(m).uses_sam for m in settings.methods)
    if uses_sam and settings.sam_checkpoint is None:
        labels.append("RANDOM SAM WEIGHTS (no --sam-checkpoint given): every SAM-based run is the -PT ablation")
    model_type = settings.profile.model_type
    if uses_sam and model_type not in PAPER_ENCODER_SUFFIX:
        labels.append(f"encoder {model_type}: the paper's numbers are ViT-B (ViT-L for -L rows)")
    return labels


def run_study(settings: StudySettings, bundles_dir: Path, resume: bool = False, progress: bool = True) -> StudyOutcome:
    """Run every planned run (skipping, with ``resume``, those already finished with the same settings),
    then write OUT/results.{md,csv,json} and OUT/plots/. Failed runs are recorded and listed; they do
    not stop the study. StudyError (before anything runs) for bad data, sites or methods."""
    start = time.perf_counter()
    sites = discover_sites(settings.data_root, settings.dataset)
    runs = plan_study(settings, sites)
    settings.out.mkdir(parents=True, exist_ok=True)
    # Staging folders of runs a hard kill (SIGKILL, power loss) interrupted: never published, safe to drop.
    for stale in (settings.out / "runs").glob(".*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    synthetic = any(s.synthetic for s in sites)
    write_json_atomic(settings.out / "study.json", {
        "command": settings.command, "settings": settings.as_json(), "labels": data_labels(synthetic, settings),
        "sites": [{"folder": s.folder, "name": s.name, "synthetic": s.synthetic, "test_samples": s.num_test} for s in sites],
        "runs": [{"name": r.name, "label": r.label, "held_out": r.held_out.folder, "settings": r.settings} for r in runs],
    })
    log.info("study of %s: %d runs (%s) on held-out sites %s -> %s", settings.dataset, len(runs),
             ", ".join(dict.fromkeys(r.label for r in runs)), ", ".join(dict.fromkeys(r.held_out.folder for r in runs)),
             settings.out)
    records = []
    with logging_redirect_tqdm([log]), tqdm(runs, desc="study runs", unit="run", disable=not progress) as bar:
        for i, run in enumerate(bar):
            previous = read_record(settings.out / "runs" / run.name)
            if resume and is_reusable(previous, run):
                log.info("[%d/%d] %s: finished earlier, skipped (--resume)", i + 1, len(runs), run.name)
                records.append(previous)
                continue
            log.info("[%d/%d] %s: %s, held out %s, trained on %s", i + 1, len(runs), run.name, run.label,
                     run.held_out.folder, ", ".join(s.folder for s in run.sources))
            context = RunContext(settings, bundles_dir, lambda stage, name=run.name: bar.set_postfix_str(f"{name}: {stage}"))
            record = execute_run(run, context)
            if record["status"] == FINISHED:
                log.info("[%d/%d] %s: unseen-site Dice %.4f (%s) in %.0f s", i + 1, len(runs), run.name,
                         record["metrics"]["held_out"]["dice"], run.held_out.folder, record["seconds"]["total"])
            records.append(record)
    rows = result_rows(records, settings.dataset)
    meta = {"command": settings.command, "settings": settings.as_json(), "labels": data_labels(synthetic, settings),
            "dataset": settings.dataset, "wall_time_s": round(time.perf_counter() - start, 1)}
    files = write_results(settings.out, rows, meta)
    plots = settings.out / "plots"
    for site in dict.fromkeys(r.held_out.folder for r in runs):
        files.append(plot_site_bars(rows, site, plots / f"dice_{site}.png", meta["labels"], settings.command))
    curves = plot_learning_curves(records, plots / "learning_curves.png", meta["labels"], settings.command)
    if curves:
        files.append(curves)
    outcome = StudyOutcome(runs, records, files, time.perf_counter() - start)
    for failure in outcome.failures:
        log.error("FAILED %s: %s (see %s)", failure["name"], failure["error"], settings.out / "runs" / failure["name"])
    log.info("%d of %d runs finished, %d failed; results in %s", len(records) - len(outcome.failures), len(records),
             len(outcome.failures), settings.out / "results.md")
    return outcome

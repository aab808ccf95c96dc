"""The fedfms demo: real NVFlare federated FedMSA jobs on synthetic multi-site prostate MRI, started from
pretrained SAM weights and from random ones (the paper's -PT ablation), side by side.

:func:`run_demo` (``tools/demo.py``) writes the synthetic six-site data, gets the pretrained SAM weights
(an official checkpoint, or by default the stand-in of :mod:`fedfms.orchestration.standin`, pretrained
by fedfms on synthetic shapes and cached) and seeded random ones, writes the FedMSA prostate job with a
small profile (same generator and code as ``jobs/fedmsa_prostate``), runs it in the NVFlare simulator
once per set of weights with every participant configured through ``local/fedfms_site.json``, then
evaluates the initial and the final global model of both runs on every site's test split (the
held-out site included) with the MSA bundle's evaluate workflow, and writes OUT/summary.{md,json},
OUT/learning_curve.png and OUT/overlays.png.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import resource
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from fedfms.bundle.checkpoint import load_trained_weights
from fedfms.bundle.datalist import load_datalist
from fedfms.core.io import copy_file_atomic, save_torch_atomic, write_json_atomic, write_text_atomic
from fedfms.core.wire import BUNDLE_IN_APP, BYTES_DOWN, BYTES_UP, EVALUATE_CONFIG, ROUNDS_FILE, TRAIN_CONFIG
from fedfms.data.demo import make_demo_data
from fedfms.networks import write_random_sam_checkpoint
from fedfms.registry import Profile, get_profile
from fedfms.reporting.federation import dice_table, plot_learning_curves
from fedfms.reporting.overlays import overlay_grid
from fedfms.runtime.bundle_network import build_bundle_network, read_train_config
from fedfms.runtime.site_config import SITE_CONFIG_FILE, allow_fedfms_components

from .jobs import JobSettings, write_job
from .simulator import niced, run_simulator, simulator_command
from .standin import STANDIN_LABEL, StandInRecipe, standin_checkpoint

log = logging.getLogger(__name__)
MODELS = {"before": "initial global model", "after": "final global model"}
#: Table columns: slice and 3D Dice of each model.
DICE_COLUMNS = [f"{metric} {key}" for metric in ("Dice", "3D Dice") for key in MODELS]
#: The two runs: the same job from pretrained SAM weights, then from random ones (-PT).
RUNS = ("pretrained", "random")
OVERLAY_ROWS = 4


#: The study's CPU profile with vit_nano (vit_tiny's encoder, a decoder half as wide: a training step
#: costs about half of vit_tiny's), at 128 px (an 8 x 8 patch grid; at 64 px the 4 x 4 grid gives the
#: gland one or two patches, and every run ended with one central blob), 4 rounds x 2 local epochs.
#: Both runs use it.
DEMO_PROFILE = get_profile("demo").override(model_type="vit_nano", image_size=128, rounds=4, local_epochs=2)
#: Batch size of the evaluations (inference only: bigger batches, fewer calls).
EVALUATION_BATCH_SIZE = 16
#: The random run's simulator runs at this lower CPU priority: it fills the cores the pretrained run's
#: chain (stand-in pretraining, its simulator, its evaluation) leaves idle instead of slowing it down.
BACKGROUND_NICENESS = 10


@dataclass(frozen=True)
class DemoOptions:
    """The demo's settings: the training ``profile`` of both runs (default DEMO_PROFILE: vit_nano, 128 px,
    4 rounds x 2 local epochs, batch 4, lr 1e-3, where the jobs use the paper's 1e-4: a few rounds need
    more), the held-out site, simulator threads (None: one per training site, so no site's process is
    restarted between tasks; the held-out site gets no client, the demo evaluates it after the federation;
    fewer threads than sites make NVFlare start a new client process
    per task: 281-337 s instead of 181 s for one run on 2 cores, measured at 64 px), the seed of the
    data, the stand-in and the random SAM weights, an official SAM checkpoint to start the pretrained run
    from (None: the stand-in), and the job's transfer options (JobSettings fields of
    ``fedfms.orchestration.transfer``, e.g. {"compression": "int8", "topk_fraction": 0.2}), the same for
    both runs."""

    sam_checkpoint: Optional[Path] = None
    profile: Profile = DEMO_PROFILE
    held_out: str = "UCL"
    threads: Optional[int] = None
    seed: int = 1337
    transfer: Mapping[str, object] = field(default_factory=dict)


def run_names(options: DemoOptions) -> Dict[str, str]:
    """Short name of each run (tables, overlay columns, curves): the stand-in or SAM, and random (-PT)."""
    return {"pretrained": "SAM" if options.sam_checkpoint else "stand-in", "random": "random (-PT)"}


def weights_labels(options: DemoOptions) -> Dict[str, str]:
    """What each run starts from, as every table, plot and summary names it."""
    pretrained = f"SAM checkpoint {Path(options.sam_checkpoint).name}" if options.sam_checkpoint else STANDIN_LABEL
    return {"pretrained": pretrained, "random": f"RANDOM SAM weights, seed {options.seed} (the paper's -PT ablation)"}


def save_initial_model(bundle: Path, checkpoint: Path, path: Path) -> Path:
    """The global model the server starts from: the job's ``bundle`` built with the same builder and seed
    as TransmittedModelPersistor, saved like NVFlare's PTFileModelPersistor files ({"model": state_dict})."""
    network = build_bundle_network(bundle, {"sam_checkpoint": str(checkpoint), "device": "cpu"})
    return save_torch_atomic({"model": network.state_dict()}, path)


@contextlib.contextmanager
def bundle_logs_hidden() -> Iterator[None]:
    """Hide INFO log lines (the bundle workflows' would bury the demo's progress bar) and give the root
    logger its handlers back afterwards: a bundle's logging.conf replaces them with one writing to the
    stdout of the moment, e.g. an evaluation log the caller then closes."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        root.handlers[:] = handlers
        root.setLevel(level)


def evaluate(bundle: Path, datalist: Path, ckpt: Path, output_dir: Path, overrides: dict, log_file) -> dict:
    """Test-split Dice of ``ckpt`` on one site: the bundle's evaluate workflow, i.e. ``python -m monai.bundle
    run evaluate --config_file "['train.json','evaluate.json']" ...``, run in this process (its output goes
    to ``log_file``). Returns the slice-averaged Dice and the per-volume 3D Dice."""
    from monai.bundle import run

    with bundle_logs_hidden(), contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
        run("evaluate", config_file=[str(bundle / TRAIN_CONFIG), str(bundle / EVALUATE_CONFIG)],
            bundle_root=str(bundle), datalist=str(datalist), ckpt_path=str(ckpt), output_dir=str(output_dir),
            **overrides)
    summary = json.loads((output_dir / "evaluation_summary.json").read_text())
    return {"dice": float(summary["dice"]), "dice_3d": float(summary["dice_3d"])}


def overlay_samples(datalist: Path, count: int = OVERLAY_ROWS) -> List[dict]:
    """``count`` test samples of a site that show prostate, evenly spread over its slices with prostate
    in datalist order (volume, then slice), so the rows come from different volumes and depths."""
    shown = [s for s in load_datalist(datalist, "test") if np.load(s["label"]).any()]
    if not shown:
        raise ValueError(f"{datalist}: no test slice with a non-empty label to show")
    picks = sorted({int((2 * k + 1) * len(shown) / (2 * count)) for k in range(count)})
    return [shown[i] for i in picks]


def predict_masks(bundle: Path, overrides: Mapping[str, object], ckpt: Path, samples: Sequence[dict]) -> List[np.ndarray]:
    """Binary masks (L, H, W) at each sample's source size: the bundle's preprocessing and network with
    ``ckpt`` loaded as the evaluate workflow loads it, sigmoid > 0.5, resized back with nearest-exact as
    the inference workflow's writer does."""
    parser = read_train_config(bundle)
    parser.update({"bundle_root": str(bundle), **overrides})
    preprocessing = parser.get_parsed_content("preprocessing", instantiate=True)
    network = build_bundle_network(bundle, overrides).eval()
    load_trained_weights(network, ckpt)
    masks = []
    with torch.no_grad():
        for sample in samples:
            logits = network(torch.as_tensor(preprocessing(dict(sample))["image"])[None].float())
            size = np.load(sample["label"]).shape[-2:]
            prob = torch.nn.functional.interpolate(torch.sigmoid(logits), size=size, mode="nearest-exact")[0]
            masks.append((prob > 0.5).numpy().astype(np.uint8))
    return masks


def slice_dice(evaluation_dir: Path, samples: Sequence[dict]) -> List[float]:
    """Each sample's Dice as the evaluate workflow scored it (its per-sample CSV, matched by image path)."""
    with open(evaluation_dir / "evaluation_per_sample.csv", newline="") as handle:
        rows = {row["image"]: row for row in csv.DictReader(handle)}
    scores = []
    for sample in samples:
        row = rows[sample["image"]]
        values = [float(v) for k, v in row.items() if k.startswith("dice_")]
        scores.append(sum(values) / len(values))
    return scores


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the simulators)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pretrained_weights(options: DemoOptions, weights_dir: Path) -> tuple[Path, Optional[dict]]:
    """The pretrained run's SAM weights: ``options.sam_checkpoint``, or the stand-in (cached, else
    pretrained now and cached) copied into ``weights_dir``. Returns (file, the stand-in's record or None)."""
    if options.sam_checkpoint:
        return Path(options.sam_checkpoint).resolve(), None
    profile = options.profile
    recipe = StandInRecipe(model_type=profile.model_type, image_size=profile.image_size, seed=options.seed)
    cached = standin_checkpoint(recipe)
    pretrained = copy_file_atomic(cached, weights_dir)
    return pretrained, {"label": STANDIN_LABEL, "recipe": asdict(recipe), "cache_file": str(cached), "file": str(pretrained)}


def evaluate_run(run: dict, run_dir: Path, settings: JobSettings, bundle: Path, data_dir: Path,
                 overrides: Mapping[str, object], label: str) -> List[dict]:
    """Dice rows of one run: its final global model on every site's test split, and its initial one on
    the held-out sites' (the bundle's evaluate workflow; outputs in ``run_dir``/evaluation, its log in
    ``run_dir``/evaluation.log). The initial model is not scored on the training sites: the headline
    table does not read it there, and it would take ten more evaluations of 1.5-2 s each."""
    models = {site: [k for k in run["models"] if k == "after" or site in settings.held_out] for site in settings.all_sites}
    rows = []
    with tqdm(total=sum(map(len, models.values())), desc=f"evaluations, {label}") as bar, \
            open(run_dir / "evaluation.log", "w") as eval_log:
        for site in settings.all_sites:
            datalist = data_dir / "prostate" / site / "datalist.json"
            row = {"site": site, "role": "held out" if site in settings.held_out else "train",
                   "test slices": len(json.loads(datalist.read_text())["test"])}
            for key in models[site]:
                ckpt = run["models"][key]
                scores = evaluate(bundle, datalist, ckpt, run_dir / "evaluation" / key / site, overrides, eval_log)
                row.update({f"Dice {key}": scores["dice"], f"3D Dice {key}": scores["dice_3d"]})
                bar.update()
            rows.append(row)
    return rows


def run_demo(out: Path, options: DemoOptions, bundles_dir: Path) -> dict:
    """Run the whole demo into ``out``; return {"table": markdown, "notes": [...], "files": [...]}.
    ``bundles_dir`` is the repository's bundles/ folder (the job carries a copy of bundles/msa/configs).

    The two runs overlap: the random run's simulator starts first, in the background at a lower CPU
    priority (BACKGROUND_NICENESS), while this process gets the pretrained weights (pretraining the
    stand-in on a first run, which keeps about 1.5 of two cores busy); the pretrained run's simulator
    follows, and each run is evaluated as soon as its simulator ends. Every site runs one OpenMP thread
    and the server averages in site-name order, so the overlap changes the time, not the numbers."""
    start = time.perf_counter()
    timings: Dict[str, float] = {}
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    profile = options.profile
    labels, short = weights_labels(options), run_names(options)

    log.info("1/5 synthetic data -> %s", out / "data")
    make_demo_data(out / "data", seed=options.seed)
    timings["data"] = time.perf_counter() - start

    settings = JobSettings(
        "fedmsa", "prostate", profile, held_out=(options.held_out,), name="fedmsa_prostate_demo",
        cross_site_eval=False,  # step 4 evaluates every site with the bundle's evaluate workflow instead
        **options.transfer,
    )
    settings = replace(settings, min_clients=len(settings.train_sites))  # wait for every training site each round
    log.info("2/5 job -> %s", out / "jobs" / settings.job_name)
    job = write_job(settings, out / "jobs", bundles_dir)
    bundle = job / "app" / BUNDLE_IN_APP
    weights_dir = out / "weights"
    weights_dir.mkdir(exist_ok=True)
    checkpoints = {"random": write_random_sam_checkpoint(
        weights_dir / f"sam_{profile.model_type}_random_seed{options.seed}.pth", profile.model_type, options.seed)}
    threads = options.threads or len(settings.deployed_sites)
    base_overrides = {**settings.bundle_overrides(), "device": "cpu", "batch_size": EVALUATION_BATCH_SIZE}

    log.info("3/5 NVFlare simulator, both runs (%d rounds, training sites %s, held out %s): %s in the background "
             "at a lower CPU priority, then %s", profile.rounds, ", ".join(settings.train_sites), options.held_out,
             labels["random"], labels["pretrained"])
    runs: Dict[str, dict] = {}
    standin: Optional[dict] = None
    cancel = threading.Event()  # stops the other simulator when anything here fails
    with ThreadPoolExecutor(max_workers=len(RUNS)) as pool, logging_redirect_tqdm():
        try:
            futures = {pool.submit(federate, job, out / "random", checkpoints["random"], threads, profile.rounds,
                                   short["random"], cancel, BACKGROUND_NICENESS): "random"}
            step = time.perf_counter()
            checkpoints["pretrained"], standin = pretrained_weights(options, weights_dir)
            timings["weights"] = time.perf_counter() - step
            futures[pool.submit(federate, job, out / "pretrained", checkpoints["pretrained"], threads, profile.rounds,
                                short["pretrained"], cancel)] = "pretrained"
            # The tiny model runs many small ops: one thread avoids OpenMP spin-waits beside the simulators.
            torch.set_num_threads(1)
            for future in as_completed(futures):
                name = futures[future]
                run = runs[name] = future.result()
                timings[f"simulator {name}"] = run["simulator_s"]
                log.info("4/5 evaluating the %s run: its final global model on every site's test split, its initial "
                         "one on the held-out site's -> %s", short[name], out / name / "evaluation")
                step = time.perf_counter()
                run["overrides"] = {**base_overrides, "sam_checkpoint": str(checkpoints[name])}
                run["sites"] = evaluate_run(run, out / name, settings, bundle, out / "data", run["overrides"], short[name])
                timings[f"evaluation {name}"] = time.perf_counter() - step
        except BaseException:
            cancel.set()
            raise
    runs = {name: runs[name] for name in RUNS}

    log.info("5/5 pictures -> %s, %s", out / "overlays.png", out / "learning_curve.png")
    step = time.perf_counter()
    held_datalist = out / "data" / "prostate" / options.held_out / "datalist.json"
    samples = overlay_samples(held_datalist)
    predictions: Dict[str, List[np.ndarray]] = {}
    cell_titles: Dict[str, List[str]] = {}
    for name, run in runs.items():
        for key, ckpt in run["models"].items():
            column = f"{short[name]}, {key}"
            with bundle_logs_hidden():
                predictions[column] = predict_masks(bundle, run["overrides"], ckpt, samples)
            dice = slice_dice(out / name / "evaluation" / key / options.held_out, samples)
            cell_titles[column] = [f"Dice {d:.2f}" for d in dice]
    overlays = overlay_grid(
        [np.load(s["image"]) for s in samples], [np.load(s["label"]) for s in samples], predictions, out / "overlays.png",
        row_titles=[f"{s['site']} {s['volume']} slice {s['slice']}" for s in samples], cell_titles=cell_titles,
        title=f"FedMSA demo, held-out site {options.held_out} (SYNTHETIC data): prediction filled, ground truth "
              f"outlined; before = initial, after = final global model.\nstand-in = {STANDIN_LABEL}"
              if not options.sam_checkpoint else f"FedMSA demo, held-out site {options.held_out} (SYNTHETIC data), "
              f"{labels['pretrained']} vs random (-PT)")
    curve = plot_learning_curves(
        {f"{short[name]}: {labels[name]}": run["history"] for name, run in runs.items()}, out / "learning_curve.png",
        title=f"FedMSA demo ({profile.model_type}, SYNTHETIC data, {options.held_out} held out)")
    timings["pictures"] = time.perf_counter() - step

    held = {name: next(r for r in run["sites"] if r["role"] == "held out") for name, run in runs.items()}
    headline = held_out_table(options.held_out, {f"{short[name]}: {labels[name]}": held[name] for name in RUNS})
    site_tables = {name: dice_table(run["sites"], DICE_COLUMNS) for name, run in runs.items()}
    wall = time.perf_counter() - start
    cpu = cpu_seconds()
    traffic = [t for run in runs.values() for entry in run["history"] for t in entry["traffic"].values()]  # per run, site and round
    mean = {d: sum(t.get(d, 0) for t in traffic) / max(1, sum(d in t for t in traffic)) for d in (BYTES_UP, BYTES_DOWN)}
    notes = [
        "Data: SYNTHETIC six-site prostate MRI (fedfms.data.demo), not the real release; sites differ in size "
        "and appearance (non-IID).",
        f"Pretrained weights: {labels['pretrained']}." + ("" if options.sam_checkpoint else
            " Its pretraining task (fedfms.data.shapes: random textured objects, brighter or darker than a textured "
            "surface, mask = the objects) is not the demo's task; "
            "it plays the role of SA-1B, which cannot be used here. With --sam-checkpoint the real weights are used."),
        f"Random weights: {labels['random']}: the same federation with a random frozen encoder.",
        f"before = {MODELS['before']} (round 0; scored on the held-out site only), after = {MODELS['after']} "
        f"(after {profile.rounds} rounds).",
        f"Profile (both runs): FedMSA, {profile.model_type}, {profile.image_size} px, {profile.rounds} rounds x "
        f"{profile.local_epochs} local epoch(s), batch {profile.batch_size}, lr {profile.learning_rate}; "
        f"{len(settings.train_sites)} sites train, {options.held_out} is held out. Dice: test split, per 2D slice "
        "(sigmoid > 0.5) averaged over slices (an empty prediction scores 1 on the slices without prostate); "
        "3D Dice: per volume, averaged over volumes.",
        f"Wall time: {wall:.0f} s; CPU time {cpu:.0f} s (this process and the simulators). Steps, which overlap "
        "(the random run's simulator beside the rest): " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ".",
        f"Transfer (both runs): {dict(options.transfer) or 'whole float32 models (the paper)'}; bytes per site and "
        f"round, mean over runs, sites and rounds: up {mean[BYTES_UP]:,.0f}, down {mean[BYTES_DOWN]:,.0f} "
        "(from the server's round reports).",
        "The real thing: prepare the public release with tools/prepare_data.py, give each site its data_root "
        "and sam_vit_b_01ec64.pth in local/fedfms_site.json (or FEDFMS_DATA_ROOT / FEDFMS_SAM_CHECKPOINT), and "
        "run jobs/fedmsa_prostate (ViT-B, 1024 px, 100 rounds) on GPUs; see README, 'Federated jobs'.",
    ]
    markdown = ["# fedfms demo: FedMSA on SYNTHETIC prostate MRI, pretrained vs random SAM weights", "",
                f"## Held-out site {options.held_out}, before and after federation", "", headline,
                *(f"- {n}" for n in notes), "", "![overlays](overlays.png)", "", "![learning curves](learning_curve.png)", ""]
    for name in RUNS:
        markdown += [f"## Every site, {short[name]} ({labels[name]})", "", site_tables[name]]
    write_text_atomic(out / "summary.md", "\n".join(markdown))
    write_json_atomic(out / "summary.json", {
        "synthetic_data": True, "method": "fedmsa", "model_type": profile.model_type, "image_size": profile.image_size,
        "rounds": profile.rounds, "local_epochs": profile.local_epochs, "batch_size": profile.batch_size,
        "learning_rate": profile.learning_rate, "train_sites": settings.train_sites, "held_out": list(settings.held_out),
        "standin": standin, "transfer": dict(options.transfer),
        "runs": {name: {"weights": str(checkpoints[name]), "label": labels[name], "sites": run["sites"],
                        "history": run["history"], "models": {k: str(v) for k, v in run["models"].items()},
                        "simulator_time_s": round(run["simulator_s"], 1)} for name, run in runs.items()},
        "overlays": {"file": str(overlays), "samples": [{k: s[k] for k in ("site", "volume", "slice", "image")} for s in samples]},
        "wall_time_s": round(wall, 1), "cpu_time_s": round(cpu, 1), "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "notes": notes,
    })
    tables = headline + "\n" + "\n".join(f"Every site, {short[name]}:\n{site_tables[name]}" for name in RUNS)
    return {"table": tables, "notes": notes, "files": [out / "summary.md", out / "summary.json", curve, overlays]}


def federate(job: Path, run_dir: Path, checkpoint: Path, threads: int, rounds: int, label: str,
             cancel: Optional[threading.Event] = None, niceness: int = 0) -> dict:
    """Run ``job`` in the simulator with every participant on ``checkpoint`` (workspace, log and models in
    ``run_dir``; ``label`` names its progress bar; ``cancel`` and ``niceness`` as in ``run_simulator``);
    return its round history, the initial / final global models and the simulator's seconds."""
    workspace = run_dir / "workspace"
    shutil.rmtree(workspace, ignore_errors=True)
    allow_fedfms_components(workspace / "local")
    data_root = run_dir.parent / "data"
    write_json_atomic(workspace / "local" / SITE_CONFIG_FILE,
                      {"data_root": str(data_root), "sam_checkpoint": str(checkpoint), "device": "cpu"})
    log.info("running: %s  (log: %s)", " ".join(niced(simulator_command(job, workspace, threads), niceness)),
             run_dir / "simulator.log")
    with tqdm(total=rounds, desc=f"federated rounds, {label}", unit="round") as bar:
        seconds = run_simulator(job, workspace, threads, run_dir / "simulator.log",
                                on_round=lambda done: bar.update(done - bar.n), rounds=rounds,
                                cancel=cancel, niceness=niceness)
    server = workspace / "server" / "simulate_job"
    models_dir = run_dir / "models"
    models_dir.mkdir(exist_ok=True)
    models = {
        "before": save_initial_model(job / "app" / BUNDLE_IN_APP, checkpoint, models_dir / "initial_global_model.pt"),
        "after": copy_file_atomic(server / "app_server" / "FL_global_model.pt", models_dir),
    }
    best = server / "app_server" / "best_FL_global_model.pt"  # by weighted validation Dice of accepted results
    if best.is_file():
        copy_file_atomic(best, models_dir)
    else:  # observed with --rounds 1 (the tables and pictures use the initial and final models only)
        log.info("no best global model saved by the server in %s (the tables use the final one)", best.parent)
    return {"history": json.loads((server / ROUNDS_FILE).read_text()), "models": models, "simulator_s": seconds}


def held_out_table(site: str, rows: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table of the held-out ``site``: one row per set of SAM weights (label -> its Dice row)."""
    lines = ["| SAM weights | " + " | ".join(f"{site} {c}" for c in DICE_COLUMNS) + " |", "|" + "---|" * (len(DICE_COLUMNS) + 1)]
    lines += ["| " + label + " | " + " | ".join(f"{row[c]:.4f}" for c in DICE_COLUMNS) + " |" for label, row in rows.items()]
    return "\n".join(lines) + "\n"

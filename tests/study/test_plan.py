"""Planning of the leave-one-site-out study (no training): sites, runs, datalists, held-out handling,
pretraining variants, the federated job and bundle command of each run, --resume decisions, the CLI."""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path

import pytest

from fedfms.core.wire import EVALUATE_CONFIG, TRAIN_CONFIG
from fedfms.registry import Profile, method_names
from fedfms.study import StudyError, StudySettings, discover_sites, plan_study
from fedfms.study.commands import bundle_command
from fedfms.study.runs import FAILED, FINISHED, _bundle_overrides, is_reusable, job_settings, sam_weights

REPO = Path(__file__).resolve().parents[2]
ALL = ("fedunet", "unet", "fedsam", "sam", "fedmsa", "msa")


def settings(root: Path, model_type: str = "vit_tiny", **kwargs) -> StudySettings:
    profile = Profile("test", model_type=model_type, image_size=64, rounds=2, batch_size=4, learning_rate=1e-3, num_workers=0)
    values = dict(dataset="prostate", data_root=root, out=root.parent / "out", methods=ALL, profile=profile)
    return StudySettings(**{**values, **kwargs})


def test_sites_in_registry_order_with_metadata(fake_root, tmp_path):
    (fake_root / "prostate" / "extra").mkdir()  # a folder without datalist is not a site
    write = json.loads((fake_root / "prostate" / "HK" / "datalist.json").read_text())
    sites = discover_sites(fake_root, "prostate")
    assert [s.folder for s in sites] == ["BIDMC", "HK", "ISBI1.5", "UCL"]
    assert all(s.synthetic and s.num_test == len(write["test"]) for s in sites)
    assert sites[2].datalist == (fake_root / "prostate" / "ISBI1.5" / "datalist.json").resolve()


def test_site_errors_name_the_problem(fake_root, tmp_path):
    with pytest.raises(StudyError, match="prepare the data first"):
        discover_sites(tmp_path / "nothing", "prostate")
    (fake_root / "prostate" / "HK" / "datalist.json").write_text("{}")
    with pytest.raises(StudyError, match=r"HK/datalist.json: not a prepared datalist"):
        discover_sites(fake_root, "prostate")
    for site in ("BIDMC", "HK", "ISBI1.5"):
        (fake_root / "prostate" / site / "datalist.json").unlink()
    with pytest.raises(StudyError, match=r"at least two prepared sites, found \['UCL'\]"):
        discover_sites(fake_root, "prostate")


def test_every_site_in_turn_without_checkpoint_is_the_pt_ablation(fake_root):
    sites = discover_sites(fake_root, "prostate")
    runs = plan_study(settings(fake_root), sites)
    assert len(runs) == 4 * 6  # no checkpoint: one variant per method, SAM-based ones are -PT
    assert [r.held_out.folder for r in runs[::6]] == ["BIDMC", "HK", "ISBI1.5", "UCL"]
    first = runs[:6]
    assert [r.name for r in first] == ["fedunet__BIDMC", "unet__BIDMC", "fedsam-pt__BIDMC", "sam-pt__BIDMC",
                                       "fedmsa-pt__BIDMC", "msa-pt__BIDMC"]
    assert [r.label for r in first] == ["FedU-Net", "U-Net", "FedSAM (-PT) [vit_tiny]", "SAM (-PT) [vit_tiny]",
                                        "FedMSA (-PT) [vit_tiny]", "MSA (-PT) [vit_tiny]"]
    assert [r.paper_row for r in first] == ["FedU-Net", None, "FedSAM (-PT)", "SAM (-PT)", "FedMSA (-PT)", "MSA (-PT)"]
    for run in runs:
        assert run.held_out not in run.sources and len(run.sources) == 3
        assert run.training_datalists == [s.datalist for s in sites if s != run.held_out]
        assert run.evaluated[0] == run.held_out and set(run.evaluated) == set(sites)


def test_checkpoint_and_no_pretraining_add_pt_rows(fake_root, tmp_path):
    ckpt = tmp_path / "sam_vit_b_01ec64.pth"
    sites = discover_sites(fake_root, "prostate")
    runs = plan_study(settings(fake_root, sam_checkpoint=ckpt, model_type="vit_b", held_out=("ucl",),
                               no_pretraining=True), sites)
    assert [(r.name, r.label, r.paper_row) for r in runs] == [
        ("fedunet__UCL", "FedU-Net", "FedU-Net"), ("unet__UCL", "U-Net", None),
        ("fedsam__UCL", "FedSAM", "FedSAM"), ("fedsam-pt__UCL", "FedSAM (-PT)", "FedSAM (-PT)"),
        ("sam__UCL", "SAM", "SAM"), ("sam-pt__UCL", "SAM (-PT)", "SAM (-PT)"),
        ("fedmsa__UCL", "FedMSA", "FedMSA"), ("fedmsa-pt__UCL", "FedMSA (-PT)", "FedMSA (-PT)"),
        ("msa__UCL", "MSA", "MSA"), ("msa-pt__UCL", "MSA (-PT)", "MSA (-PT)")]
    by_name = {r.name: r for r in runs}
    assert by_name["fedmsa__UCL"].settings["sam_checkpoint"] == str(ckpt)
    assert by_name["fedmsa-pt__UCL"].settings["sam_checkpoint"] is None
    assert by_name["fedmsa__UCL"].settings != by_name["fedmsa-pt__UCL"].settings
    assert "model_type" not in by_name["unet__UCL"].settings  # the encoder does not change a U-Net run
    large = plan_study(settings(fake_root, sam_checkpoint=ckpt, model_type="vit_l", methods=("fedmsa", "msa"),
                                held_out=("UCL",)), sites)
    assert [(r.label, r.paper_row) for r in large] == [("FedMSA-L", "FedMSA-L"), ("MSA-L", "MSA-L")]


def test_held_out_and_method_errors(fake_root):
    sites = discover_sites(fake_root, "prostate")
    with pytest.raises(StudyError, match=r"\['I2CVB'\] are not prepared sites of prostate .*\['BIDMC', 'HK', 'ISBI1.5', 'UCL'\]"):
        plan_study(settings(fake_root, held_out=("I2CVB",)), sites)
    with pytest.raises(StudyError, match="unknown method 'fedavg'"):
        plan_study(settings(fake_root, methods=("fedavg",)), sites)
    repeated = plan_study(settings(fake_root, held_out=("HK", "hk"), methods=("unet", "unet")), sites)
    assert [r.name for r in repeated] == ["unet__HK"]


def test_federated_job_and_centralized_overrides_agree(fake_root, tmp_path):
    study = settings(fake_root, held_out=("HK",), out=tmp_path / "out")
    runs = {r.name: r for r in plan_study(study, discover_sites(fake_root, "prostate"))}
    job = job_settings(runs["fedmsa-pt__HK"], study)
    assert job.method == "fedmsa" and job.held_out == ("HK",) and job.cross_site_eval is False
    assert job.train_sites == ["BIDMC", "ISBI1.5", "UCL"] and job.min_clients == 3 and job.profile.rounds == 2
    central = _bundle_overrides(runs["msa-pt__HK"], study, None)
    assert central == job.bundle_overrides() == {"num_classes": 1, "model_type": "vit_tiny", "image_size": 64,
                                                  "batch_size": 4, "learning_rate": 1e-3, "num_workers": 0}
    # -PT: federated participants share one seeded random file; the centralized bundle inits itself.
    weights = sam_weights(runs["fedmsa-pt__HK"], study)
    assert weights == tmp_path / "out" / "weights" / "sam_vit_tiny_random_seed1337.pth" and weights.is_file()
    assert sam_weights(runs["msa-pt__HK"], study) is None and sam_weights(runs["unet__HK"], study) is None


def test_fednnunet_and_nnunet_runs_fill_the_paper_fednnunet_column(fake_root, tmp_path):
    study = settings(fake_root, held_out=("UCL",), out=tmp_path / "out", methods=("fednnunet", "nnunet"))
    runs = {r.name: r for r in plan_study(study, discover_sites(fake_root, "prostate"))}
    assert [(r.label, r.paper_row) for r in runs.values()] == [("FednnU-Net", "FednnU-Net"), ("nnU-Net", None)]
    job = job_settings(runs["fednnunet__UCL"], study)
    assert job.method == "fednnunet" and job.train_sites == ["BIDMC", "HK", "ISBI1.5"] and job.min_clients == 3
    # the same bundle settings both ways; nnU-Net keeps its own SGD learning rate (the profile's 1e-3 is
    # Adam's) and its poly schedule spans rounds x local epochs (the centralized run trains that many epochs)
    central = _bundle_overrides(runs["nnunet__UCL"], study, None)
    assert central == job.bundle_overrides() == {"num_classes": 1, "image_size": 64, "batch_size": 4, "num_workers": 0,
                                                  "lr_schedule_epochs": 2}
    assert sam_weights(runs["nnunet__UCL"], study) is None and "model_type" not in runs["nnunet__UCL"].settings


def test_bundle_command_passes_pooled_datalists_as_a_list():
    argv = bundle_command(REPO / "bundles" / "msa", "evaluate", [TRAIN_CONFIG, EVALUATE_CONFIG],
                          {"datalist": ["/d/a/datalist.json", "/d/b/datalist.json"], "sam_checkpoint": None, "image_size": 64})
    assert argv[1:5] == ["-m", "monai.bundle", "run", "evaluate"]
    assert ast.literal_eval(argv[argv.index("--config_file") + 1]) == [str(REPO / "bundles/msa/configs/train.json"),
                                                                      str(REPO / "bundles/msa/configs/evaluate.json")]
    assert ast.literal_eval(argv[argv.index("--datalist") + 1]) == ["/d/a/datalist.json", "/d/b/datalist.json"]
    assert "--sam_checkpoint" not in argv and argv[-2:] == ["--image_size", "64"]
    with pytest.raises(FileNotFoundError, match="bundle config .*nowhere/configs/train.json not found"):
        bundle_command(REPO / "nowhere", "", [TRAIN_CONFIG], {})


def test_resume_reuses_only_finished_runs_with_the_same_settings(fake_root):
    run = plan_study(settings(fake_root, methods=("unet",), held_out=("UCL",)), discover_sites(fake_root, "prostate"))[0]
    assert is_reusable({"status": FINISHED, "settings": run.settings}, run)
    assert not is_reusable({"status": FAILED, "settings": run.settings}, run)
    assert not is_reusable({"status": FINISHED, "settings": {**run.settings, "rounds": 3}}, run)
    # a bundle setting the profile passes on (here mixed precision) makes the run another one
    study = settings(fake_root, methods=("unet",), held_out=("UCL",))
    bf16 = replace(study, profile=study.profile.override(amp="true", amp_dtype="bfloat16"))
    other = plan_study(bf16, discover_sites(fake_root, "prostate"))[0]
    assert other.settings["bundle"]["amp"] is True and not is_reusable({"status": FINISHED, "settings": run.settings}, other)
    assert not is_reusable(None, run)


def test_cli_profile_defaults_and_overrides(cli, fake_root, tmp_path):
    args = cli.parse_args(["--dataset", "prostate", "--data-root", str(fake_root), "--out", str(tmp_path / "o"),
                           "--profile", "demo", "--rounds", "3", "--held-out", "UCL"])
    study = cli.settings_from_args(args, "CMD")
    profile = study.profile
    assert (profile.model_type, profile.image_size, profile.rounds, profile.local_epochs, profile.checkpoint) == ("vit_tiny", 64, 3, 1, "final")
    assert study.methods == tuple(method_names()) and {"fednnunet", "nnunet", *ALL} <= set(study.methods)
    assert study.held_out == ("UCL",) and study.command == "CMD"
    paper = cli.settings_from_args(cli.parse_args(["--dataset", "prostate", "--data-root", str(fake_root), "--out", "o"]), "")
    profile = paper.profile
    assert (profile.model_type, profile.image_size, profile.rounds, profile.learning_rate, profile.checkpoint) == ("vit_b", None, 100, None, "best")
    assert replace(paper, command="x").command == "x"
    with pytest.raises(SystemExit):
        cli.parse_args(["--dataset", "prostate", "--data-root", "d", "--out", "o", "--held-out", "UCL", "--all-sites"])


def test_cli_bad_input_exits_2(cli, fake_root, tmp_path, capsys):
    base = ["--dataset", "prostate", "--data-root", str(fake_root), "--out", str(tmp_path / "o"), "-q"]
    assert cli.main([*base, "--sam-checkpoint", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth does not exist" in capsys.readouterr().err
    assert cli.main([*base, "--held-out", "Nowhere"]) == 2
    assert not (tmp_path / "o" / "runs").exists()  # nothing ran

"""Bundle files: configs kept in sync across bundles, metadata checks, TorchScript export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import verify_metadata
from monai.data import load_net_with_metadata
from monai.networks.nets import UNet

from fedfms.networks import MSASegmenter, SAMSegmenter

REPO = Path(__file__).resolve().parents[2]
BUNDLES = ("sam", "msa", "unet")
SCHEMA = REPO / "bundles" / "schema" / "meta_schema_fedfms.json"
# the only train.json ids in which the bundles may differ
NETWORK_IDS = {"network_def", "batch_size", "image_size", "output_scale", "model_type", "sam_checkpoint", "activation_checkpointing",
               "attention"}


def _config(bundle: str, name: str) -> dict:
    return json.loads((REPO / "bundles" / bundle / "configs" / name).read_text())


def test_bundles_share_everything_but_the_network():
    for name in ("evaluate.json", "inference.json", "logging.conf"):
        texts = {(REPO / "bundles" / b / "configs" / name).read_text() for b in BUNDLES}
        assert len(texts) == 1, f"bundles/*/configs/{name} differ"
    train = {b: _config(b, "train.json") for b in BUNDLES}
    for config in train.values():  # each bundle checks the options it has: the network options may differ
        config["initialize"] = [{k: v for k, v in step.items() if k not in NETWORK_IDS} if isinstance(step, dict) else step
                                for step in config["initialize"]]
    for bundle in ("sam", "unet"):
        differing = {k for k in train["msa"].keys() | train[bundle].keys() if train["msa"].get(k) != train[bundle].get(k)}
        assert differing <= NETWORK_IDS, f"{bundle} and msa train.json differ in {differing - NETWORK_IDS}"
    assert train["sam"]["network_def"] == {**train["msa"]["network_def"], "_target_": "fedfms.networks.SAMSegmenter"}
    assert (train["sam"]["batch_size"], train["msa"]["batch_size"]) == (6, 4)  # the paper's FedSAM / FedMSA batches


@pytest.mark.parametrize("bundle", BUNDLES)
def test_readme_checks_pass(bundle, readme_command):
    """verify_metadata against the shipped schema (offline) and verify_net_in_out at 64 px."""
    log = readme_command(bundle, "Check the bundle", {}, in_process=True)
    assert "metadata is verified with no error" in log
    assert "data shape of network is verified with no error" in log


def test_shipped_schema_rejects_incomplete_metadata(tmp_path):
    good = _config("msa", "metadata.json")
    broken = {
        "no_copyright": {k: v for k, v in good.items() if k != "copyright"},
        "no_pred_output": {**good, "network_data_format": {**good["network_data_format"], "outputs": {}}},
        "input_without_modality": json.loads(json.dumps(good).replace('"modality": "MR or RGB (dataset dependent)", ', "")),
    }
    for name, meta in broken.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(meta))
        with pytest.raises(ValueError, match="Failed validating"):
            verify_metadata(meta_file=str(path), filepath=str(SCHEMA))


@pytest.mark.parametrize("bundle, network, name", [("sam", SAMSegmenter, "FedSAM"), ("msa", MSASegmenter, "FedMSA")])
def test_export_sam_and_msa_torchscript_by_tracing(bundle, network, name, readme_command, tmp_path):
    torch.manual_seed(0)
    net = network(model_type="vit_tiny", image_size=64).eval()
    (tmp_path / "train").mkdir()
    torch.save(net.state_dict(), tmp_path / "train" / "model.pt")
    readme_command(bundle, "Export to TorchScript", {"OUT": str(tmp_path)}, ["--model_type", "vit_tiny"],
                   replace={"IMAGE_SIZE=1024": "IMAGE_SIZE=64"}, in_process=True)
    scripted, meta, _ = load_net_with_metadata(str(tmp_path / "model.ts"))
    assert meta["name"] == f"{name} segmentation"
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(image), net(image))


def test_export_unet_torchscript_by_scripting(readme_command, tmp_path):
    net = UNet(2, 3, 1, channels=[32, 64, 128, 256, 512], strides=[2, 2, 2, 2], num_res_units=2, norm="batch").eval()
    (tmp_path / "train").mkdir()
    torch.save(net.state_dict(), tmp_path / "train" / "model.pt")
    readme_command("unet", "Export to TorchScript", {"OUT": str(tmp_path)}, in_process=True)
    scripted, _, _ = load_net_with_metadata(str(tmp_path / "model.ts"))
    image = torch.rand(2, 3, 32, 32)  # scripting keeps batch size and image size free
    with torch.no_grad():
        torch.testing.assert_close(scripted(image), net(image))

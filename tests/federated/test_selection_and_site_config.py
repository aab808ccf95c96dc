"""The transmitted-tensor selection (both directions) and per-site configuration, without NVFlare runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedfms.runtime.selection import (
    TransmissionError, check_incoming, describe, frozen_fingerprint, select_outgoing, transmitted_names,
)
from fedfms.runtime.site_config import (
    COMPONENT_PREFIX, SITE_CONFIG_FILE, SiteConfigError, allow_fedfms_components, resolve_sam_checkpoint,
    resolve_site_config,
)
from fedfms.networks import MSASegmenter


@pytest.fixture(scope="module")
def msa():
    return MSASegmenter(model_type="vit_tiny", image_size=64)


def test_outgoing_state_is_exactly_the_transmitted_tensors(msa):
    names = transmitted_names(msa)
    sent = select_outgoing(msa.state_dict(), names, "site X")
    assert list(sent) == sorted(names) and all(isinstance(v, np.ndarray) for v in sent.values())
    assert not any(k.startswith("image_encoder.") and "_adapter." not in k for k in sent)
    state = msa.state_dict()
    assert describe(sent) == [(k, tuple(state[k].shape), "float32") for k in sorted(names)]
    partial = {k: v for k, v in state.items() if k != sorted(names)[0]}
    with pytest.raises(TransmissionError, match=f"site X lacks transmitted tensors: {sorted(names)[0]}"):
        select_outgoing(partial, names, "site X")


def test_incoming_model_with_a_frozen_tensor_or_a_gap_is_refused(msa):
    names = transmitted_names(msa)
    state = msa.state_dict()
    good = select_outgoing(state, names, "server")
    received = check_incoming(good, names, "server (round 0)")
    assert set(received) == names and all(torch.equal(received[k], state[k]) for k in names)
    with pytest.raises(TransmissionError, match=r"unexpected: image_encoder\.patch_embed\.proj\.weight"):
        check_incoming({**good, "image_encoder.patch_embed.proj.weight": state["image_encoder.patch_embed.proj.weight"]},
                       names, "server (round 0)")
    with pytest.raises(TransmissionError, match="missing"):
        check_incoming({k: v for k, v in good.items() if k != sorted(names)[-1]}, names, "server")


def test_site_file_wins_over_environment_and_errors_name_the_source(tmp_path):
    data = tmp_path / "data"
    (data / "prostate" / "ISBI1.5").mkdir(parents=True)
    (data / "prostate" / "ISBI1.5" / "datalist.json").write_text("{}")
    checkpoint = tmp_path / "sam.pth"
    checkpoint.write_bytes(b"x")
    workspace = tmp_path / "site"
    env = {"FEDFMS_DATA_ROOT": str(data), "FEDFMS_SAM_CHECKPOINT": str(checkpoint), "FEDFMS_DEVICE": "cpu"}
    config = resolve_site_config(workspace, "prostate", "ISBI1.5", env)
    assert (config.datalist, config.sam_checkpoint, config.device) == (
        data / "prostate" / "ISBI1.5" / "datalist.json", checkpoint, "cpu")
    with pytest.raises(SiteConfigError, match="FEDFMS_DATA_ROOT"):
        resolve_site_config(workspace, "prostate", "ISBI1.5", {})
    (workspace / "local").mkdir(parents=True)
    (workspace / "local" / SITE_CONFIG_FILE).write_text(json.dumps({"data_root": str(tmp_path / "elsewhere")}))
    with pytest.raises(SiteConfigError, match=r"elsewhere/prostate/ISBI1.5/datalist.json \(configured by .*fedfms_site.json\)"):
        resolve_site_config(workspace, "prostate", "ISBI1.5", env)
    assert resolve_sam_checkpoint(workspace, env) is None  # the file sets no checkpoint: random SAM weights
    (workspace / "local" / SITE_CONFIG_FILE).write_text(json.dumps({"data_root": str(data), "checkpoint": "typo"}))
    with pytest.raises(SiteConfigError, match="expected a JSON object with keys among"):
        resolve_site_config(workspace, "prostate", "ISBI1.5", env)


def test_allow_listing_keeps_the_provisioned_resources(tmp_path):
    (tmp_path / "resources.json.default").write_text(json.dumps({"format_version": 2, "class_allow_list": ["nvflare."]}))
    path = allow_fedfms_components(tmp_path)
    resources = json.loads(path.read_text())
    assert resources == {"format_version": 2, "class_allow_list": ["nvflare.", COMPONENT_PREFIX]}
    allow_fedfms_components(tmp_path)  # idempotent
    assert json.loads(path.read_text())["class_allow_list"].count(COMPONENT_PREFIX) == 1


def test_frozen_fingerprint_tracks_only_the_weights_that_stay_home(msa):
    names = transmitted_names(msa)
    state = {k: v.clone() for k, v in msa.state_dict().items()}
    reference = frozen_fingerprint(state, names)
    state[sorted(names)[0]] += 1.0  # training changes transmitted tensors: same frozen weights
    assert frozen_fingerprint(state, names) == reference
    state["image_encoder.patch_embed.proj.weight"][0, 0, 0, 0] += 1e-3  # another SAM checkpoint
    assert frozen_fingerprint(state, names) != reference

"""A training step of the MSA bundle, driven the way monai.fl's MonaiAlgo drives it (ConfigWorkflow
"train"), changes only adapter, mask decoder and head tensors; the optimizer and loss follow the paper."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.bundle import ConfigWorkflow
from monai.engines import SupervisedEvaluator, SupervisedTrainer

from fedfms.networks import transmitted_keys

REPO = Path(__file__).resolve().parents[2]


def test_msa_step_changes_only_adapters_decoder_and_head(small_datalist, tiny_sam_checkpoint, tmp_path):
    workflow = ConfigWorkflow(
        config_file=str(REPO / "bundles" / "msa" / "configs" / "train.json"),
        workflow_type="train",
        logging_file=False,
        bundle_root=str(REPO / "bundles" / "msa"),
        datalist=str(small_datalist),
        output_dir=str(tmp_path),
        sam_checkpoint=str(tiny_sam_checkpoint),
        model_type="vit_tiny",
        image_size=64,
        num_classes=2,  # adds the class head, so all three trained parts are exercised
        batch_size=6,  # the 6 training slices: one step per epoch
        num_workers=0,
        max_epochs=1,
        val_interval=2,  # no validation: the 1-channel validation labels do not fit the 2-class head
    )
    workflow.initialize()
    # what MonaiAlgo requires of a bundle
    assert isinstance(workflow.trainer, SupervisedTrainer) and isinstance(workflow.evaluator, SupervisedEvaluator)
    optimizer, loss = workflow.parser.get_parsed_content("optimizer"), workflow.parser.get_parsed_content("loss")
    assert isinstance(optimizer, torch.optim.Adam)
    assert (optimizer.defaults["lr"], optimizer.defaults["betas"], optimizer.defaults["weight_decay"]) == (1e-4, (0.9, 0.999), 0)
    assert isinstance(loss, torch.nn.BCEWithLogitsLoss) and loss.pos_weight.flatten().tolist() == [2.0, 2.0]

    network = workflow.trainer.network
    # the label has one channel, the head two: duplicate the label channel to train the 2-class head
    workflow.trainer.prepare_batch = lambda batch, device, non_blocking, **kw: (
        batch["image"].to(device),
        batch["label"].repeat(1, 2, 1, 1).to(device),
    )
    before = {k: v.clone() for k, v in network.state_dict().items()}
    workflow.trainer.run()
    assert workflow.trainer.state.iteration == 1
    changed = {k for k, v in network.state_dict().items() if not torch.equal(v, before[k])}

    sent = set(transmitted_keys(network))
    assert changed and changed <= sent, f"changed outside the transmitted set: {sorted(changed - sent)[:5]}"
    assert all(".space_adapter." in k or ".mlp_adapter." in k or k.startswith(("mask_decoder.", "class_head.")) for k in changed)
    for part in (".space_adapter.", ".mlp_adapter.", "mask_decoder.", "class_head."):
        assert any(part in k for k in changed), f"no {part} tensor was trained"
    assert not any(k.startswith("image_encoder.") and "adapter" not in k for k in changed)

"""Training-efficiency measurements of FedSAM vs FedMSA models on this machine.

One measurement = one network at one size, in its own process (so peak memory is that model's alone):
parameters (total, trainable, transmitted), bytes sent per round, FLOPs of one training step
(forward + backward, counted by torch's FlopCounterMode), median wall time of a training step
(Adam, BCEWithLogits with pos_weight 2, as in training) and the process's peak resident memory.
"""

import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from fedfms.networks import transmitted_state
from fedfms.registry.methods import network_class


@dataclass(frozen=True)
class EfficiencyResult:
    network: str
    model_type: str
    image_size: int
    batch_size: int
    device: str
    total_params: int
    trainable_params: int
    transmitted_params: int
    transmitted_bytes: int
    train_step_tflops: float
    train_step_seconds: float
    peak_memory_mib: float

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure_in_process(
    network: str,
    model_type: str,
    image_size: int,
    batch_size: int = 1,
    steps: int = 3,
    device: str = "cpu",
    checkpoint: Optional[str] = None,
    activation_checkpointing: bool = False,
) -> EfficiencyResult:
    """Measure one configuration in the current process (see ``measure`` for a clean process)."""
    torch.manual_seed(1337)
    dev = torch.device(device)
    model = network_class(network)(
        model_type=model_type, image_size=image_size, checkpoint=checkpoint,
        activation_checkpointing=activation_checkpointing,
    ).to(dev).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-4, betas=(0.9, 0.999))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.full((1, 1, 1), 2.0, device=dev))
    images = torch.rand(batch_size, 3, image_size, image_size, device=dev)
    labels = (torch.rand(batch_size, 1, image_size // 4, image_size // 4, device=dev) > 0.5).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), labels).backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:  # the first step also warms up
        step()
    times = []
    for _ in range(steps):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - start)
    sent = transmitted_state(model)
    return EfficiencyResult(
        network=network,
        model_type=model_type,
        image_size=image_size,
        batch_size=batch_size,
        device=device,
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in trainable),
        transmitted_params=sum(t.numel() for t in sent.values()),
        transmitted_bytes=sum(t.numel() * t.element_size() for t in sent.values()),
        train_step_tflops=counter.get_total_flops() / 1e12,
        train_step_seconds=statistics.median(times),
        peak_memory_mib=_peak_memory_mib(dev),
    )


def measure(network: str, model_type: str, image_size: int, **options) -> EfficiencyResult:
    """Measure one configuration in a fresh Python process, so peak memory is not shared."""
    call = dict(network=network, model_type=model_type, image_size=image_size, **options)
    code = (
        "import json, sys; from fedfms.reporting.efficiency import measure_in_process; "
        "print(json.dumps(measure_in_process(**json.loads(sys.argv[1])).as_dict()))"
    )
    done = subprocess.run([sys.executable, "-c", code, json.dumps(call)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {call} failed:\n{done.stderr[-2000:]}")
    return EfficiencyResult(**json.loads(done.stdout.strip().splitlines()[-1]))


def markdown_table(results: List[EfficiencyResult]) -> str:
    """The results as a markdown table, one row per configuration."""
    head = ("| model | input | batch | device | trainable | sent per round | TFLOPs per step (fwd+bwd) "
            "| s per step | peak memory |\n|---|---|---|---|---|---|---|---|---|")
    names = {"sam": "FedSAM", "msa": "FedMSA"}
    rows = [
        f"| {names[r.network]} {r.model_type} | {r.image_size} | {r.batch_size} | {r.device} "
        f"| {r.trainable_params / 1e6:.2f} M | {r.transmitted_bytes / 2**20:.1f} MiB | {r.train_step_tflops:.3g} "
        f"| {r.train_step_seconds:.2f} | {r.peak_memory_mib:,.0f} MiB |"
        for r in results
    ]
    return "\n".join([head, *rows])

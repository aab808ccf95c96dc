"""Training-efficiency measurements with the paper's Table 2 columns, one configuration per process.

A row is a ``Configuration`` (a network and how it computes: attention, autocast, activation
checkpointing) measured at one encoder, image size and batch size, in a fresh process so peak memory
is that row's alone: learnable (trainable) parameters, bytes sent per round each way, FLOPs of one
training step (forward + backward as executed, torch's FlopCounterMode), median wall time of a training
step (Adam, BCEWithLogits with pos_weight 2, as the bundles train), peak memory of training (CUDA:
``torch.cuda.max_memory_allocated``; CPU: the process's peak resident memory) and median predict time
per image (batch 1, no gradient). Ratios are taken against a row's ``baseline`` measured in the same run.
"""

import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from fedfms.bundle.precision import resolve_precision
from fedfms.networks import transmitted_state
from fedfms.registry.methods import network_class

#: A failing row records this much of the child's error output.
ERROR_TAIL = 600


def payload_bytes(state: Mapping[str, torch.Tensor]) -> Tuple[int, int]:
    """(upload, download) bytes per site and round: the transmitted tensors as they are held; a site
    uploads its trained tensors and downloads the global model's, the same names and shapes."""
    size = sum(t.numel() * t.element_size() for t in state.values())
    return size, size


@dataclass(frozen=True)
class Configuration:
    """One row of the benchmark: ``network`` ("sam" | "msa") with the segmenter / bundle options it
    runs with (``fused_adam``: PyTorch's fused Adam, as the bundles' optimizer; the reference paths use
    the paper's plain Adam); ``baseline`` names the row its ratios are taken against; ``wire_bytes`` maps the
    transmitted state to (upload, download) bytes per round (an update-compression row brings its own)."""

    label: str
    network: str
    attention: str = "sdpa"
    amp: Union[bool, str] = "auto"
    amp_dtype: str = "auto"
    activation_checkpointing: bool = False
    fused_adam: bool = True
    baseline: Optional[str] = None
    wire_bytes: Callable[[Mapping[str, torch.Tensor]], Tuple[int, int]] = field(default=payload_bytes, compare=False)


#: The benchmark's rows, in table order (``--configs`` picks a subset). The reference paths compute as
#: the paper's code does: float32, segment_anything's attention, no activation checkpointing, plain Adam.
CONFIGURATIONS: Dict[str, Configuration] = {
    "fedsam_reference": Configuration("FedSAM fp32 (reference path)", "sam", attention="sam", amp=False, fused_adam=False),
    "fedsam_defaults": Configuration("FedSAM, bundle defaults", "sam", baseline="fedsam_reference"),
    "fedmsa_reference": Configuration("FedMSA fp32 (reference path)", "msa", attention="sam", amp=False, fused_adam=False),
    "fedmsa_defaults": Configuration("FedMSA, bundle defaults", "msa", baseline="fedmsa_reference"),
    "fedmsa_checkpointing": Configuration(
        "FedMSA, bundle defaults + activation checkpointing", "msa", activation_checkpointing=True,
        baseline="fedmsa_reference",
    ),
    # the defaults with segment_anything's attention: what SDPA changes under each device's autocast
    "fedmsa_sam_attention": Configuration(
        "FedMSA, bundle defaults with SAM's attention", "msa", attention="sam", baseline="fedmsa_reference",
    ),
    "fedmsa_sam_attention_checkpointing": Configuration(
        "FedMSA, bundle defaults with SAM's attention + activation checkpointing", "msa", attention="sam",
        activation_checkpointing=True, baseline="fedmsa_reference",
    ),
}


@dataclass(frozen=True)
class EfficiencyResult:
    config: str
    label: str
    network: str
    model_type: str
    image_size: int
    batch_size: int
    device: str
    precision: str
    status: str  # "ok" or why the row has no measurement (e.g. "out of memory")
    total_params: int = 0
    trainable_params: int = 0
    upload_bytes: int = 0
    download_bytes: int = 0
    train_step_tflops: float = 0.0
    train_step_seconds: float = 0.0
    train_step_cpu_seconds: float = 0.0
    peak_memory_mib: float = 0.0
    predict_seconds_per_image: float = 0.0

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode, also counting the CPU flash-attention kernel SDPA runs on CPU.

    Its registry covers the CUDA SDPA kernels only; the CPU ops are torch internals (aten names), so
    tests/networks/test_efficiency.py checks the count of one SDPA call against the formula."""
    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:  # shapes, as for the CUDA ops
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out, query, key, value)

    ops = torch.ops.aten
    return FlopCounterMode(display=False, custom_mapping={
        ops._scaled_dot_product_flash_attention_for_cpu: forward,
        ops._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    })


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _timed(fn: Callable[[], None], repeats: int, device: torch.device) -> Tuple[float, float]:
    """Median wall time and median CPU time (all threads of this process) of ``repeats`` calls of
    ``fn``, waiting for the device after each."""
    wall, cpu = [], []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def measure_in_process(
    config: str,
    model_type: str,
    image_size: int,
    batch_size: int = 1,
    steps: int = 3,
    device: str = "cpu",
    checkpoint: Optional[str] = None,
    threads: Optional[int] = None,
) -> EfficiencyResult:
    """Measure the configuration named ``config`` (a key of CONFIGURATIONS) in the current process;
    ``measure`` runs it in a clean one. One warm-up training step comes first, then ``steps`` timed
    steps (peak memory is read after them), one step whose FLOPs are counted, and ``steps`` timed
    predictions of one image. ``threads``: CPU threads (torch.set_num_threads; default torch's choice)."""
    spec = CONFIGURATIONS[config]
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(1337)
    dev = torch.device(device)
    precision = resolve_precision(spec.amp, spec.amp_dtype, dev)
    with dev:  # build on the device: no host copy of a ViT-L, no slow CPU init on a GPU machine
        model = network_class(spec.network)(
            model_type=model_type, image_size=image_size, checkpoint=checkpoint,
            activation_checkpointing=spec.activation_checkpointing, attention=spec.attention,
        ).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-4, betas=(0.9, 0.999), fused=spec.fused_adam)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision.needs_grad_scaler)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.full((1, 1, 1), 2.0, device=dev))
    images = torch.rand(batch_size, 3, image_size, image_size, device=dev)
    labels = (torch.rand(batch_size, 1, image_size // 4, image_size // 4, device=dev) > 0.5).float()

    def step() -> None:  # what the bundles' SupervisedTrainer + AutocastInferer do per iteration
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            logits = model(images)
        scaler.scale(loss_fn(logits.float(), labels)).backward()
        scaler.step(optimizer)
        scaler.update()

    step()  # warm-up
    step_seconds, step_cpu_seconds = _timed(step, steps, dev)
    peak = _peak_memory_mib(dev)
    # Counted after the peak is read: under FlopCounterMode a checkpointed step keeps what activation
    # checkpointing frees (ViT-B 512 px on CPU: 2.3 GB peak instead of 1.7 GB).
    with flop_counter() as counter:
        step()
    model.eval()
    one_image = images[:1]

    def predict() -> None:
        with torch.no_grad(), precision.autocast():
            model(one_image)

    predict()  # warm-up
    predict_seconds, _ = _timed(predict, steps, dev)
    upload, download = spec.wire_bytes(transmitted_state(model))
    return EfficiencyResult(
        config=config, label=spec.label, network=spec.network, model_type=model_type, image_size=image_size,
        batch_size=batch_size, device=device, precision=precision.describe(), status="ok",
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in trainable),
        upload_bytes=upload, download_bytes=download,
        train_step_tflops=counter.get_total_flops() / 1e12,
        train_step_seconds=step_seconds,
        train_step_cpu_seconds=step_cpu_seconds,
        peak_memory_mib=peak,
        predict_seconds_per_image=predict_seconds,
    )


def measure(config: str, model_type: str, image_size: int, timeout: Optional[float] = None, **options) -> EfficiencyResult:
    """Measure one configuration in a fresh Python process, so peak memory is not shared. A child
    that runs out of memory, fails or exceeds ``timeout`` seconds gives a row whose ``status`` says so."""
    call = dict(config=config, model_type=model_type, image_size=image_size, **options)
    code = (
        "import json, sys; from fedfms.reporting.efficiency import measure_in_process; "
        "print(json.dumps(measure_in_process(**json.loads(sys.argv[1])).as_dict()))"
    )
    spec = CONFIGURATIONS[config]
    failed = dict(config=config, label=spec.label, network=spec.network, model_type=model_type, image_size=image_size,
                  batch_size=options.get("batch_size", 1), device=options.get("device", "cpu"), precision="-")
    try:
        done = subprocess.run([sys.executable, "-c", code, json.dumps(call)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return EfficiencyResult(**failed, status=f"timed out after {timeout:.0f} s")
    if done.returncode != 0:
        tail = done.stderr.strip()[-ERROR_TAIL:]
        oom = "OutOfMemoryError" in tail or "out of memory" in tail.lower() or done.returncode == -9
        return EfficiencyResult(**failed, status="out of memory" if oom else f"failed: {tail.splitlines()[-1] if tail else done.returncode}")
    return EfficiencyResult(**json.loads(done.stdout.strip().splitlines()[-1]))


def ratios(result: EfficiencyResult, results: List[EfficiencyResult]) -> Optional[Dict[str, float]]:
    """Against the row's baseline measured at the same model type, image size and batch size (None
    without one): speed-up = baseline step time / this one (on CPU by CPU time, which neighbours' load
    on a shared machine changes far less than wall time; on CUDA by wall time), memory ratio = this peak
    / baseline peak, and the FLOPs ratio."""
    baseline_name = CONFIGURATIONS[result.config].baseline
    match = [r for r in results if r.config == baseline_name and r.status == "ok" and
             (r.model_type, r.image_size, r.batch_size) == (result.model_type, result.image_size, result.batch_size)]
    if not match or result.status != "ok":
        return None
    base = match[0]
    timing = "train_step_cpu_seconds" if result.device == "cpu" else "train_step_seconds"
    return {"speedup": getattr(base, timing) / getattr(result, timing),
            "memory_ratio": result.peak_memory_mib / base.peak_memory_mib,
            "flops_ratio": result.train_step_tflops / base.train_step_tflops}


def markdown_table(results: List[EfficiencyResult]) -> str:
    """The results as a markdown table with the paper's Table 2 columns, one row per measurement."""
    head = ("| configuration | encoder | input | batch | compute | learnable | MiB up / down per round "
            "| TFLOPs per step (fwd+bwd) | s per step (wall / CPU) | peak memory | s per image (predict) | vs baseline |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for r in results:
        if r.status != "ok":
            rows.append(f"| {r.label} | {r.model_type} | {r.image_size} | {r.batch_size} | - | {r.status} |  |  |  |  |  |  |")
            continue
        ratio = ratios(r, results)
        versus = f"{ratio['speedup']:.2f}x speed, {ratio['memory_ratio']:.2f}x memory" if ratio else "-"
        rows.append(
            f"| {r.label} | {r.model_type} | {r.image_size} | {r.batch_size} | {r.precision} "
            f"| {r.trainable_params / 1e6:.2f} M | {r.upload_bytes / 2**20:.1f} / {r.download_bytes / 2**20:.1f} "
            f"| {r.train_step_tflops:.3g} | {r.train_step_seconds:.2f} / {r.train_step_cpu_seconds:.2f} | {r.peak_memory_mib:,.0f} MiB "
            f"| {r.predict_seconds_per_image:.3f} | {versus} |"
        )
    return "\n".join([head, *rows])

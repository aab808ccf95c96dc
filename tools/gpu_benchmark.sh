#!/usr/bin/env bash
# The efficiency benchmark on a GPU at the paper's setting: 1024 px, the paper's batch sizes (FedSAM 6,
# FedMSA 4), ViT-B and ViT-L, every configuration of fedfms.reporting.efficiency.CONFIGURATIONS (fp32
# reference paths, bundle defaults, with activation checkpointing, with SAM's attention): step time,
# peak GPU memory (torch.cuda.max_memory_allocated), FLOPs, bytes, predict time. Each row runs in its
# own process and is cut off after ROW_TIMEOUT seconds (default 34: 14 rows stay under 8 minutes; on an
# H200 a row took 17-24 s); a row that runs out of GPU memory is reported as such. Measured on an H200:
# README, "Efficiency".
#   bash tools/gpu_benchmark.sh [OUT] [extra benchmark options]     # OUT defaults to efficiency_gpu
#   DEVICE=cuda:1 ROW_TIMEOUT=90 bash tools/gpu_benchmark.sh        # another GPU, a longer cut-off
#   bash tools/gpu_benchmark.sh efficiency_gpu --dry-run            # the rows, without measuring
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-efficiency_gpu}"
shift || true
device="${DEVICE:-cuda:0}"
python="${PYTHON:-python}"
if [[ " $* " != *" --dry-run "* ]]; then
    "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_benchmark.sh: no CUDA device visible to torch')"
fi
exec "$python" "$root/tools/benchmark_efficiency.py" --device "$device" --model-type vit_b vit_l --image-size 1024 \
    --batch-size paper --steps 3 --timeout "${ROW_TIMEOUT:-34}" --out "$out" "$@"

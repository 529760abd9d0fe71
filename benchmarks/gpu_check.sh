#!/usr/bin/env bash
# The codec at Stable Diffusion's size on one GPU, in at most 8 minutes, without network:
#   1. writes SD 2.1-base's architectures with random weights (python -m codec.core.random_backbones),
#   2. fp16 encode + decode of a 768x512 photo, per stage, peak memory (benchmarks/codec_speed.py),
#   3. UNet steps/s at 768x512 (a 96x64 latent, batch 1),
#   4. adapter-training steps/s at batch 8 x 256^2 (codec/train/adapter.py's train_adapter, 60 s).
#
#   bash benchmarks/gpu_check.sh                       # on the GPU
#   bash benchmarks/gpu_check.sh --device cpu --quick  # the same path with the tiny models, on a CPU (~1 min)
#
# Uses the repository's .venv when there is one, else python3. Exits non-zero when any stage fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEVICE=cuda QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--device cuda|cpu] [--quick]" >&2; exit 2 ;;
  esac
done
PYTHON="$ROOT/.venv/bin/python"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ "$QUICK" = 1 ]; then  # plumbing check: tiny models, small training crops, a few seconds each
  KIND=tiny DTYPE=float32 CROP=64 BATCH=2 MINUTES=0.1 REPEATS=1
else
  KIND=sd-2-1-base DTYPE=float16 CROP=256 BATCH=8 MINUTES=1 REPEATS=3
fi
# Stage limits in seconds, 480 in all on a GPU (the 8-minute budget); a CPU gets three times as long.
SLOW=1
[ "$DEVICE" = cpu ] && DTYPE=float32 SLOW=3
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
stage() { echo; echo "== $1 ($(date +%T))"; }

stage "environment"
timeout $((30 * SLOW)) "$PYTHON" - "$DEVICE" <<'EOF'
import sys, torch, diffusers
device = sys.argv[1]
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, diffusers {diffusers.__version__}")
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit("CUDA is not available to torch (pass --device cpu for the CPU check)")
    print("GPU:", torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF

stage "random $KIND backbone (weights stored in float16)"
timeout $((120 * SLOW)) "$PYTHON" -m codec.core.random_backbones "$KIND" "$WORK/backbone" --dtype float16
du -sh "$WORK/backbone"

stage "encode + decode, 768x512, $DTYPE on $DEVICE (analytic mode)"
timeout $((120 * SLOW)) "$PYTHON" benchmarks/codec_speed.py --backbone "$WORK/backbone" --adapter none --mode analytic \
  --bpp 0.1 --device "$DEVICE" --dtype "$DTYPE" --repeats "$REPEATS" --warmup 1 --threads "$(nproc)"

stage "UNet steps/s at 768x512, $DTYPE on $DEVICE"
timeout $((60 * SLOW)) "$PYTHON" - "$WORK/backbone" "$DEVICE" "$DTYPE" <<'EOF'
import sys, time, torch
from codec.core.backbone import load_backbone
backbone = load_backbone(sys.argv[1], sys.argv[2], sys.argv[3])
x = torch.randn(1, backbone.latent_channels, 512 // 8, 768 // 8)
def sync():
    if backbone.device.type == "cuda":
        torch.cuda.synchronize()
with torch.no_grad():
    for _ in range(2):  # warm-up: kernels chosen, memory pooled
        backbone.model_output(x, 500)
    sync()
    calls, started = 0, time.perf_counter()
    while calls < 5 or time.perf_counter() - started < 10:
        backbone.model_output(x, 500)
        calls += 1
    sync()
seconds = time.perf_counter() - started
print(f"UNet: {calls / seconds:.2f} steps/s ({1000 * seconds / calls:.0f} ms a step, {calls} steps, batch 1, latent 96x64)")
EOF

stage "adapter training steps/s, batch $BATCH x ${CROP}^2, backbone in its default dtype on $DEVICE"
timeout $((150 * SLOW)) "$PYTHON" - "$WORK" "$DEVICE" "$CROP" "$BATCH" "$MINUTES" <<'EOF'
import sys
from pathlib import Path
import torch
from codec.data.photos import load_photos
from codec.train.adapter import train_adapter
work, device, crop, batch, minutes = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
photos = list(load_photos(Path("tests/data/photos")).values())  # throughput only: any photos will do
train_adapter(str(work / "backbone"), photos, work / "adapter", work / "train", minutes, resume=False, device=device,
              crop=crop, batch=batch)
state = torch.load(work / "train" / "adapter.pt", weights_only=False)["state"]
memory = f", CUDA max allocated {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.startswith("cuda") else ""
print(f"adapter training: {state['step'] / state['seconds']:.2f} steps/s ({state['step']} steps in "
      f"{state['seconds']:.0f} s, batch {batch} x {crop}^2{memory})")
EOF

stage "done"

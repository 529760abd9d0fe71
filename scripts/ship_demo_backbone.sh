#!/usr/bin/env bash
# Ship a newly trained demo backbone: copy it (and its learned adapter, if one is given) into
# assets/models/demo, then regenerate what depends on its weights: the naive baseline's prior
# (keyed by the backbone's fingerprint) and the demo study's diffusion stimuli (their recipe holds
# the fingerprints, so build-stimuli rebuilds exactly those). The model card, the demo cases of
# tests/codec/data/golden-v2.json and the measured numbers in the docs are updated by hand
# (assets/models/demo/MODEL_CARD.md says with which commands).
#
# Without an adapter the demo runs the training-free (analytic) mode: mode "auto" picks it.
#
#   bash scripts/ship_demo_backbone.sh runs/demo-v2/export runs/demo-v2/data2 [runs/demo-v2/adapter]
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: $0 BACKBONE_EXPORT TRAINING_DATA [ADAPTER_FOLDER]"
export_dir=${1:?$usage}
data_dir=${2:?$usage}
adapter_dir=${3:-}
python=${PYTHON:-.venv/bin/python}
demo=assets/models/demo

needed=("$export_dir"/{vae,unet}/config.json "$export_dir"/scheduler/scheduler_config.json "$export_dir"/codec.json)
[ -z "$adapter_dir" ] || needed+=("$adapter_dir"/adapter.{json,safetensors})
for need in "${needed[@]}"; do
  [ -f "$need" ] || { echo "error: $need is missing" >&2; exit 1; }
done

rm -rf "$demo"/{vae,unet,scheduler,adapter}
cp -r "$export_dir"/{vae,unet,scheduler} "$demo"/
cp "$export_dir"/codec.json "$demo"/codec.json
if [ -n "$adapter_dir" ]; then
  mkdir -p "$demo"/adapter
  cp "$adapter_dir"/adapter.json "$adapter_dir"/adapter.safetensors "$demo"/adapter/
fi

rm -f assets/models/naive/naive-prior-*.safetensors
"$python" -m codec.evaluate.baselines fit-naive --backbone demo --data "$data_dir" --dir assets/models/naive
"$python" -m study build-stimuli assets/studies/demo.yaml
git status --short assets

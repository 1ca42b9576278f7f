#!/usr/bin/env bash
# Make bench/.env-yolo: a separate venv holding Ultralytics (AGPL-3.0) for bench_train.py only.
# instaseg never imports it; the benchmark talks to it through bench/yolo_runner.py and files.
# torch/torchvision come from the machine's local wheels (pip's constraint in /etc/xdg/pip pins
# torch 2.14.1 / torchvision 0.29.1, the same builds as .venv), so both sides use the same torch.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .env-yolo/bin/python ]; then
    python3 -m venv .env-yolo
    .env-yolo/bin/pip install --quiet ultralytics
fi
.env-yolo/bin/python - <<'PY'
import torch, torchvision, ultralytics
print(f"ultralytics {ultralytics.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}")
PY

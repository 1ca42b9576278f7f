"""Benchmark the model zoo: parameters, training-step time against torchvision's stock Mask R-CNN, and
the quickstart's mask mAP against training minutes.

    .venv/bin/python bench/bench_models.py --steps 6 [--quickstart runs/quickstart]

Timings are ratios against the peer (torchvision's stock ``maskrcnn_resnet50_fpn`` with random
weights, set to the same 512 px input as our "cpu" preset) measured in the same run on the same
synthetic batches (128 px images, resized by each model), so they hold on a shared machine where
absolute seconds do not.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torchvision

import instaseg  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
from instaseg.data import Dataset
from instaseg.data.synth import make_synthetic
from instaseg.engine.data import TrainingImages, collate
from instaseg.models import count_parameters, get_model, list_models


def step_seconds(model: torch.nn.Module, batches: list, steps: int) -> float:
    """Median seconds per training step (forward, backward, SGD update) after one warm-up step."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for images, targets in batches[: steps + 1]:
        start = time.perf_counter()
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--quickstart", type=Path, help="a finished quickstart folder to report mAP vs minutes from")
    args = parser.parse_args()
    presets = ("cpu", "gpu", "small")
    lines = ["| model (80 classes) | " + " | ".join(f"params, {p} preset" for p in presets) + " |", "|---" * 4 + "|"]
    for name in list_models():
        counts = [f"{count_parameters(name, 80, p) / 1e6:.1f} M" for p in presets]
        lines.append(f"| {name} | " + " | ".join(counts) + " |")
    print("\n".join(lines) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        train_json, _ = make_synthetic(Path(tmp) / "d", num_train=args.batch_size * (args.steps + 1), num_val=0)
        # Limits at the 128 px image size: the images stay as they are and each model resizes them its own way.
        images = TrainingImages(Dataset.load(train_json), augment=False, min_sizes=(128,), max_size=128)
        batches = [
            collate([images[i] for i in range(k, k + args.batch_size)]) for k in range(0, len(images), args.batch_size)
        ]
        torch.manual_seed(0)
        peer = torchvision.models.detection.maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=5, min_size=512, max_size=853
        )
        candidates = {
            "torchvision maskrcnn_resnet50_fpn at 512 px (peer)": peer,
            "maskrcnn_resnet50_fpn, cpu preset (512 px)": get_model("maskrcnn_resnet50_fpn", 4, preset="cpu"),
            "maskrcnn_resnet18_fpn, cpu preset (512 px)": get_model("maskrcnn_resnet18_fpn", 4, preset="cpu"),
            "maskrcnn_resnet18_fpn, small preset (128 px, quickstart)": get_model(
                "maskrcnn_resnet18_fpn", 4, preset="small"
            ),
        }
        seconds = {label: step_seconds(model, batches, args.steps) for label, model in candidates.items()}
    base = seconds["torchvision maskrcnn_resnet50_fpn at 512 px (peer)"]
    lines = [f"| model (training step, batch {args.batch_size} x 128 px) | s/step | speed vs peer |", "|---|---|---|"]
    lines += [f"| {label} | {s:.2f} | {base / s:.1f}x |" for label, s in seconds.items()]
    print("\n".join(lines) + "\n")

    if args.quickstart:
        rows = [json.loads(line) for line in (args.quickstart / "model" / "metrics.jsonl").read_text().splitlines()]
        lines = ["| minutes | iterations | val mask mAP@[.5:.95] | mask mAP@.5 | box mAP |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['elapsed'] / 60:.1f} | {r['iteration']} | {r['val_mask_mAP']:.3f} | {r['val_mask_mAP50']:.3f} | {r['val_box_mAP']:.3f} |"
            for r in rows
            if "val_mask_mAP" in r
        ]
        print("\n".join(lines))


if __name__ == "__main__":
    main()

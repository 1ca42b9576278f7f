"""The Ultralytics YOLOv8n-seg side of bench_train.py; runs ONLY inside bench/.env-yolo.

Ultralytics is AGPL-3.0 and never a dependency of instaseg: this script lives in its own venv
(made by bench/yolo_env.sh) and exchanges files, not imports, with the instaseg side.

It trains YOLOv8n-seg from scratch (``yolov8n-seg.yaml``, no pretrained weights) for a wall-clock
budget, predicts the given validation images and saves every image's instances as
``<index>.npz`` (boxes xyxy, masks at full image resolution, class indices, scores), then times
inference on one 512 x 512 image with 2 threads. bench_train.py evaluates the masks with
instaseg's evaluator, so both models are scored by the same code on the same images.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

# Offline before ultralytics is imported: no update checks, no font or weight downloads, no telemetry.
os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="Ultralytics data.yaml written by `instaseg convert --to yolo`")
    parser.add_argument("--val-images", required=True, help="text file: one validation image path per line")
    parser.add_argument("--minutes", type=float, required=True, help="training wall-clock budget")
    parser.add_argument("--imgsz", type=int, required=True, help="training and inference size (multiple of 32)")
    parser.add_argument("--out", required=True, help="folder for the run, the npz predictions and result.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from ultralytics import YOLO, settings

    settings.update({"sync": False, "tensorboard": False, "wandb": False, "mlflow": False})
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    model = YOLO("yolov8n-seg.yaml", task="segment")  # architecture only: random initialisation
    start = time.perf_counter()
    model.train(
        data=args.data,
        time=args.minutes / 60.0,
        epochs=1000,  # a ceiling only: `time` stops the run
        imgsz=args.imgsz,
        batch=args.batch,
        device="cpu",
        workers=0,
        pretrained=False,
        amp=False,
        plots=False,
        seed=args.seed,
        deterministic=False,
        project=str(out),
        name="train",
        exist_ok=True,
        verbose=False,
    )
    train_seconds = time.perf_counter() - start

    weights = out / "train" / "weights" / "best.pt"
    model = YOLO(str(weights if weights.exists() else out / "train" / "weights" / "last.pt"))
    val_images = [line.strip() for line in Path(args.val_images).read_text().splitlines() if line.strip()]
    predictions = out / "predictions"
    predictions.mkdir(exist_ok=True)
    for index, path in enumerate(val_images):
        # conf=0.001 and retina_masks are Ultralytics' own settings for computing mask mAP.
        result = model.predict(
            path, imgsz=args.imgsz, conf=0.001, max_det=100, retina_masks=True, device="cpu", verbose=False
        )[0]
        height, width = result.orig_shape
        if result.masks is None:
            masks = np.zeros((0, height, width), bool)
        else:
            masks = result.masks.data.cpu().numpy() > 0.5
        np.savez_compressed(
            predictions / f"{index}.npz",
            boxes=result.boxes.xyxy.cpu().numpy().astype(np.float32),
            masks=masks,
            class_ids=result.boxes.cls.cpu().numpy().astype(np.int64),
            scores=result.boxes.conf.cpu().numpy().astype(np.float32),
        )

    image = np.asarray(Image.open(val_images[0]).convert("RGB").resize((512, 512)))[
        ..., ::-1
    ]  # Ultralytics takes BGR arrays
    latencies = []
    for repeat in range(13):
        tick = time.perf_counter()
        model.predict(image, imgsz=512, conf=0.25, device="cpu", verbose=False)
        if repeat >= 3:  # the first calls pay for lazy initialisation
            latencies.append(time.perf_counter() - tick)
    (out / "result.json").write_text(
        json.dumps(
            {
                "train_seconds": train_seconds,
                "latency_ms_512": 1000 * statistics.median(latencies),
                "weights": str(weights),
                "predictions": str(predictions),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

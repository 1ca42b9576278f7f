"""Mask mAP against CPU training wall-clock: instaseg's Mask R-CNN vs Ultralytics YOLOv8n-seg (from scratch).

For each dataset both models train for the same wall-clock budget on the same images with 2 torch
threads, one after the other, each in its own process (so ``wait4`` gives that run's peak RSS and
CPU seconds). Both then predict the same validation images, and *instaseg's* evaluator scores both
sets of masks, so the two mAPs come from one piece of code. Last, each process times inference on
one 512 x 512 image with 2 threads (median of 10 after 3 warm-up calls).

Datasets (written under ``--out``/data):

- ``synthetic``: ``make_synthetic(num_train=200, num_val=50, size=128, seed=0)``; our "small" preset,
  YOLO ``imgsz=128``.
- ``nuclei``: /work/shared/datasets/dsb2018_nuclei (53 images, no split of its own): a seeded
  split, ``numpy.random.default_rng(0).permutation`` of the images sorted by file name, first 11
  (20 %) for validation; our "cpu" preset (short side 512), YOLO ``imgsz=512``.
- ``balloon``: /work/shared/datasets/balloon, its own train (61) / val (13) split; "cpu" preset,
  YOLO ``imgsz=512``.

YOLO reads the same annotations, written in its format by instaseg's converter
(``instaseg.data.convert.write_dataset(..., "yolo")``) from the COCO files our side trains on.

Usage (from the repository root, after ``bash bench/yolo_env.sh``)::

    .venv/bin/python bench/bench_train.py --datasets synthetic nuclei balloon --minutes 5 15
    .venv/bin/python bench/bench_train.py --report-only   # rebuild OUT/train.md from saved runs
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
YOLO_PYTHON = ROOT / "bench" / ".env-yolo" / "bin" / "python"
THREADS = 2
# name -> (our preset, YOLO imgsz)
SETTINGS = {"synthetic": ("small", 128), "nuclei": ("cpu", 512), "balloon": ("cpu", 512)}
NUCLEI_VAL_FRACTION = 0.2


# -- data ---------------------------------------------------------------------------------------------
def prepare(name: str, data_root: Path) -> Path:
    """Write ``train.json`` / ``val.json`` (COCO) and the YOLO copy for ``name``; returns its folder."""
    from instaseg.data import Dataset
    from instaseg.data.convert import ReadOptions, open_dataset, write_dataset

    folder = data_root / name
    if (folder / "yolo" / "data.yaml").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    if name == "synthetic":
        from instaseg.data.synth import make_synthetic

        train_json, val_json = make_synthetic(
            folder / "coco", num_train=200, num_val=50, size=128, seed=0, overwrite=True
        )
        train, val = Dataset.load(train_json), Dataset.load(val_json)
    elif name == "nuclei":
        full = open_dataset(
            SHARED / "dsb2018_nuclei" / "stage1_train", "mask-files", options=ReadOptions(class_name="nucleus")
        )
        ids = [img["id"] for img in sorted(full.images, key=lambda img: img["file_name"])]
        order = np.random.default_rng(0).permutation(len(ids))
        n_val = round(NUCLEI_VAL_FRACTION * len(ids))
        val_ids = {ids[i] for i in order[:n_val]}
        train, val = full.subset(set(ids) - val_ids), full.subset(val_ids)
    elif name == "balloon":
        train = open_dataset(SHARED / "balloon" / "train", "via", options=ReadOptions(class_name="balloon"))
        val = open_dataset(SHARED / "balloon" / "val", "via", options=ReadOptions(class_name="balloon"))
    else:
        raise SystemExit(f"unknown dataset {name!r}; choose from {', '.join(SETTINGS)}")
    for split, dataset in (("train", train), ("val", val)):
        coco = dict(dataset.coco)
        coco["info"] = {**coco.get("info", {}), "image_root": os.path.relpath(dataset.image_root.resolve(), folder)}
        Dataset(coco, dataset.image_root).save(folder / f"{split}.json", overwrite=True)
        write_dataset(dataset, folder / f"yolo-{split}", "yolo", split=split, overwrite=True)
    names = dict(enumerate(train.class_names))
    (folder / "yolo").mkdir(exist_ok=True)
    (folder / "yolo" / "data.yaml").write_text(
        json.dumps(  # JSON is valid YAML
            {
                "path": str(folder.resolve()),
                "train": str((folder / "yolo-train" / "images" / "train").resolve()),
                "val": str((folder / "yolo-val" / "images" / "val").resolve()),
                "names": names,
            }
        )
    )
    return folder


def splits(folder: Path):
    from instaseg.data import Dataset

    if (folder / "train.json").exists():
        return Dataset.load(folder / "train.json"), Dataset.load(folder / "val.json")
    return Dataset.load(folder / "coco" / "train.json"), Dataset.load(folder / "coco" / "val.json")


# -- one run per process --------------------------------------------------------------------------
def run_child(command: list[str], log: Path) -> dict:
    """Run ``command``, returning its wall-clock seconds, CPU seconds and peak RSS (MB)."""
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    with log.open("w") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed ({process.returncode}); see {log}")
    return {
        "process_seconds": time.perf_counter() - start,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux reports kilobytes
        "load_avg_before": load_before,
    }


def ours_child(args: argparse.Namespace) -> None:
    """(Child process.) Train our model for the budget, predict val, time 512 px inference."""
    import torch

    from instaseg.engine.config import TrainConfig
    from instaseg.engine.predictor import load
    from instaseg.engine.train import train

    torch.set_num_threads(THREADS)
    folder, out = Path(args.data), Path(args.run_dir)
    train_set, val_set = splits(folder)
    start = time.perf_counter()
    # Validating twice (half-way and at the end) rather than every eighth of the budget keeps most
    # of a short CPU budget for training; the best of the two checkpoints is kept.
    (minutes,) = args.minutes
    config = TrainConfig(
        minutes=minutes,
        preset=args.preset,
        seed=0,
        val_every=minutes / 2,
        crop_size=args.crop_size,
        processes=args.processes,
    )
    best = train(config, train_set, val_set, out=out, overwrite=True)
    train_seconds = time.perf_counter() - start
    predictor = load(best, device="cpu")
    results = []
    for image_id, instances in predictor.iter_dataset(val_set, score_threshold=0.05, progress=False):
        results += instances.to_coco(image_id, val_set.category_ids)
    (out / "results.json").write_text(json.dumps(results))
    image = _latency_image(val_set)
    latencies = []
    for repeat in range(13):
        tick = time.perf_counter()
        predictor.predict(image)
        if repeat >= 3:
            latencies.append(time.perf_counter() - tick)
    (out / "result.json").write_text(
        json.dumps({"train_seconds": train_seconds, "latency_ms_512": 1000 * statistics.median(latencies)})
    )


def _latency_image(dataset) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(dataset.read_image(dataset.images[0])).resize((512, 512)))


def run_dataset(name: str, minutes: float, out: Path, models: list[str], recipe: list[str]) -> None:
    from instaseg.core.structures import Instances
    from instaseg.evaluation import evaluate, evaluate_results

    folder = prepare(name, out / "data")
    _, val_set = splits(folder)
    preset, imgsz = SETTINGS[name]
    record_path = out / f"{name}.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    for model in models:
        run_dir = out / "runs" / f"{name}-{model}-{minutes:g}min"
        run_dir.mkdir(parents=True, exist_ok=True)
        if model == "instaseg":
            command = [
                sys.executable,
                __file__,
                "--child",
                "--data",
                str(folder),
                "--run-dir",
                str(run_dir),
                "--minutes",
                str(minutes),
                "--preset",
                preset,
                *recipe,
            ]
        else:
            val_list = run_dir / "val_images.txt"
            val_list.write_text("".join(f"{val_set.image_path(img).resolve()}\n" for img in val_set.images))
            command = [
                str(YOLO_PYTHON),
                str(ROOT / "bench" / "yolo_runner.py"),
                "--data",
                str(folder / "yolo" / "data.yaml"),
                "--val-images",
                str(val_list),
                "--minutes",
                str(minutes),
                "--imgsz",
                str(imgsz),
                "--out",
                str(run_dir),
                "--threads",
                str(THREADS),
            ]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: training {model} for {minutes:g} min", flush=True)
        usage = run_child(command, run_dir / "log.txt")
        child = json.loads((run_dir / "result.json").read_text())
        if model == "instaseg":
            result = evaluate_results(val_set, json.loads((run_dir / "results.json").read_text()), errors=False)
        else:
            predictions = {}
            for index, image in enumerate(val_set.images):
                saved = np.load(run_dir / "predictions" / f"{index}.npz")
                predictions[image["id"]] = Instances(
                    saved["boxes"], saved["masks"], saved["class_ids"], saved["scores"], val_set.class_names
                )
            result = evaluate(val_set, predictions, errors=False)
        stats = result.stats["segm"]
        record.setdefault(model, {})[f"{minutes:g}"] = {
            "command": "python bench/bench_train.py " + shlex.join(sys.argv[1:]),
            "minutes": minutes,
            "mask_map": stats[0],
            "mask_ap50": stats[1],
            "train_seconds": child["train_seconds"],
            "latency_ms_512": child["latency_ms_512"],
            **usage,
        }
        print(f"  mask mAP {stats[0]:.3f}, AP50 {stats[1]:.3f}, {usage['peak_rss_mb']:.0f} MB peak", flush=True)
        record_path.write_text(json.dumps(record, indent=2))


# -- report ---------------------------------------------------------------------------------------------
def write_report(out: Path) -> None:
    rows, ratios, commands, own_vals = [], [], [], []
    for name in SETTINGS:
        path = out / f"{name}.json"
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        budgets = sorted({m for runs in record.values() for m in runs}, key=float)
        for minutes in budgets:
            for model in ("instaseg", "yolov8n-seg"):
                r = record.get(model, {}).get(minutes)
                if r is None:
                    continue
                commands += [r["command"]] if r["command"] not in commands else []
                rows.append(
                    f"| {name} | {model} | {r['minutes']:g} | {r['mask_map']:.3f} | {r['mask_ap50']:.3f} | "
                    f"{r['train_seconds']:.0f} | {r['cpu_seconds']:.0f} | {r['latency_ms_512']:.0f} | "
                    f"{r['peak_rss_mb']:.0f} | {r['load_avg_before']:.1f} |"
                )
            own = _yolo_own_map(out / "runs" / f"{name}-yolov8n-seg-{minutes}min" / "train" / "results.csv")
            if own is not None:
                own_vals.append(f"{name} at {minutes} min {own:.3f}")
            a, b = record.get("instaseg", {}).get(minutes), record.get("yolov8n-seg", {}).get(minutes)
            if a and b:
                ratios.append(
                    f"| {name} | {minutes} | {_ratio(a['mask_map'], b['mask_map'])} | {_ratio(a['mask_ap50'], b['mask_ap50'])} | "
                    f"{_ratio(a['latency_ms_512'], b['latency_ms_512'])} | {_ratio(a['peak_rss_mb'], b['peak_rss_mb'])} |"
                )
    text = "\n".join(
        [
            "## Training: mask mAP at equal CPU wall-clock, instaseg Mask R-CNN vs YOLOv8n-seg",
            "",
            "Commands (from the repository root, after `bash bench/yolo_env.sh`):",
            "",
            *(f"    .venv/bin/{c}" for c in commands),
            "",
            "| dataset | model | budget (min) | mask mAP | mask AP50 | train wall (s) | process CPU (s) | latency 512 px (ms) | peak RSS (MB) | load avg at start |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Ratios (instaseg / YOLOv8n-seg; mAP above 1 means instaseg is better, latency and memory below 1):",
            "",
            "| dataset | budget (min) | mask mAP | mask AP50 | latency | peak RSS |",
            "|---|---|---|---|---|---|",
            *ratios,
            "",
            "For reference, Ultralytics' own validator (best epoch, its own matching and interpolation, masks at "
            f"training resolution) reported mask mAP50-95: {', '.join(own_vals) or 'n/a'}.",
            "",
        ]
    )
    (out / "train.md").write_text(text + "\n" + NOTES)
    print(text)


def _yolo_own_map(results_csv: Path) -> float | None:
    """The best mask mAP50-95 Ultralytics logged during training, or None without a log."""
    if not results_csv.exists():
        return None
    lines = [line.split(",") for line in results_csv.read_text().splitlines()]
    column = [c.strip() for c in lines[0]].index("metrics/mAP50-95(M)")
    return max(float(row[column]) for row in lines[1:])


def _ratio(a: float, b: float) -> str:
    # Below half a mAP point both models have learned nothing yet, and a ratio of two noise values means nothing.
    if max(a, b) < 0.005:
        return "n/a (both < 0.005)"
    return f"{a / b:.2f}" if b > 0 else "inf (YOLO 0)"


NOTES = """\
How it was measured:

- Both models train from scratch (no pretrained weights anywhere) for the same wall-clock budget,
  validation included, with `torch.set_num_threads(2)`, one run after the other on the same
  machine. instaseg: `instaseg.engine.train.train(TrainConfig(minutes=M), ...)` with the preset named in
  `bench/bench_train.py` (its cosine schedule is fitted to the budget; `val_every=M/2`, i.e. two
  validations instead of the default eight, because each costs minutes on large images). YOLOv8n-seg:
  `YOLO("yolov8n-seg.yaml").train(time=M/60, pretrained=False, amp=False, plots=False, batch=8)`
  in a separate venv (`bench/.env-yolo`; Ultralytics is AGPL-3.0 and never a dependency of
  instaseg) with `YOLO_OFFLINE=1`.
- "train wall" is the time of the whole training call (setup and final evaluation included, so a
  little over the budget); "process CPU" and "peak RSS" come from `wait4` on the whole process
  (training, predicting the val set and the latency loop).
- Both models' val-set masks are scored by instaseg's evaluator (COCO mask mAP@[.5:.95],
  identical to pycocotools). instaseg predicts with score >= 0.05 (`predict_dataset`'s default);
  YOLO with `conf=0.001, max_det=100, retina_masks=True`, Ultralytics' own settings for mAP.
- Latency: one val image resized to 512 x 512, median of 10 calls after 3 warm-up calls, 2 threads,
  each model's default prediction threshold.
- The machine has 2 cores shared with five other engineers running tests at the same time: the
  load average at the start of each run is listed; the CPU seconds show how much of the budget
  each run actually got. Numbers under contention are noisy; compare rows of the same dataset.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0], help="training budgets, one run each")
    parser.add_argument("--models", nargs="+", default=["instaseg", "yolov8n-seg"], choices=["instaseg", "yolov8n-seg"])
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "train"))
    parser.add_argument("--report-only", action="store_true", help="only rebuild OUT/train.md")
    parser.add_argument("--crop-size", type=int, default=None, help="instaseg: train on crops of this size")
    parser.add_argument("--processes", type=int, default=1, help="instaseg: training processes (CPU)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        ours_child(args)
        return
    out = Path(args.out)
    if not args.report_only:
        if "yolov8n-seg" in args.models and not YOLO_PYTHON.exists():
            raise SystemExit("run `bash bench/yolo_env.sh` first (it makes bench/.env-yolo)")
        for minutes in args.minutes:
            for name in args.datasets:
                recipe = ["--processes", str(args.processes)] + (
                    ["--crop-size", str(args.crop_size)] if args.crop_size else []
                )
                run_dataset(name, minutes, out, args.models, recipe)
    write_report(out)


if __name__ == "__main__":
    main()

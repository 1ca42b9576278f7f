"""Time COCO mask evaluation (evaluate + accumulate + summarize) for pycocotools, faster-coco-eval and instaseg.

A synthetic ground truth of 5,000 images, ~50,000 instances and ~100,000 detections (RLE masks on
256x256 images, crowd regions included) is generated once; every engine then evaluates the same
in-memory dicts in this one process, so the ratios compare like with like.

    .venv/bin/python bench/bench_eval.py                 # full size, includes pycocotools (minutes)
    .venv/bin/python bench/bench_eval.py --images 500 --skip-pycocotools
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import platform
import time

import numpy as np
from pycocotools import mask as mask_utils

from instaseg.data import Dataset
from instaseg.evaluation import evaluate_results

NUM_CLASSES = 10


def _polygon(rng: np.random.Generator, size: int) -> list[float]:
    """A random star-shaped polygon of 8-16 vertices somewhere inside the image."""
    radius = rng.uniform(3, size / 6)
    cx, cy = rng.uniform(radius, size - radius, 2)
    angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(8, 17)))
    radii = radius * rng.uniform(0.6, 1.0, len(angles))
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).reshape(-1).tolist()


def _jitter(polygon: list[float], rng: np.random.Generator, size: int) -> list[float]:
    points = np.asarray(polygon).reshape(-1, 2)
    shifted = points * rng.uniform(0.85, 1.15) + rng.normal(0, 2.0, 2) + (1 - rng.uniform(0.85, 1.15)) * points.mean(0)
    return np.clip(shifted, 0, size - 1).reshape(-1).tolist()


def make_case(
    num_images: int, gt_per_image: int, dets_per_image: int, size: int, seed: int = 0
) -> tuple[dict, list[dict]]:
    """COCO ground truth dict and a results list with compressed-RLE masks."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "file_name": f"{i:05d}.png", "width": size, "height": size} for i in range(num_images)]
    categories = [{"id": k + 1, "name": f"class{k}"} for k in range(NUM_CLASSES)]
    annotations, results = [], []
    for image in images:
        polygons = [_polygon(rng, size) for _ in range(rng.integers(gt_per_image // 2, gt_per_image * 3 // 2 + 1))]
        classes = rng.integers(1, NUM_CLASSES + 1, len(polygons))
        rles = [mask_utils.frPyObjects([p], size, size)[0] for p in polygons]
        for rle, cls in zip(rles, classes, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": int(cls),
                    "segmentation": {"size": [size, size], "counts": rle["counts"].decode()},
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": int(rng.random() < 0.02),
                }
            )
        det_polygons, det_classes = [], []
        for _ in range(rng.integers(dets_per_image // 2, dets_per_image * 3 // 2 + 1)):
            if polygons and rng.random() < 0.7:  # a noisy copy of a ground-truth instance
                k = rng.integers(len(polygons))
                det_polygons.append(_jitter(polygons[k], rng, size))
                det_classes.append(int(classes[k]) if rng.random() < 0.85 else int(rng.integers(1, NUM_CLASSES + 1)))
            else:  # a false positive somewhere
                det_polygons.append(_polygon(rng, size))
                det_classes.append(int(rng.integers(1, NUM_CLASSES + 1)))
        for polygon, cls in zip(det_polygons, det_classes, strict=True):
            rle = mask_utils.frPyObjects([polygon], size, size)[0]
            results.append(
                {
                    "image_id": image["id"],
                    "category_id": cls,
                    "segmentation": {"size": [size, size], "counts": rle["counts"].decode()},
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "score": float(rng.random()),
                }
            )
    return {"images": images, "categories": categories, "annotations": annotations}, results


def time_pycocotools(gt: dict, results: list[dict], iou_type: str) -> tuple[float, float, np.ndarray]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, results = copy.deepcopy(gt), copy.deepcopy(results)
    start, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return time.perf_counter() - start, time.process_time() - cpu, np.asarray(evaluator.stats)


def time_faster_coco_eval(gt: dict, results: list[dict], iou_type: str, **options) -> tuple[float, float, np.ndarray]:
    from faster_coco_eval import COCO, COCOeval_faster

    gt, results = copy.deepcopy(gt), copy.deepcopy(results)
    start, cpu = time.perf_counter(), time.process_time()
    coco_gt = COCO(gt)
    evaluator = COCOeval_faster(coco_gt, coco_gt.loadRes(results), iou_type, print_function=lambda *a: None, **options)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return time.perf_counter() - start, time.process_time() - cpu, np.asarray(evaluator.stats)


def time_instaseg(gt: dict, results: list[dict], iou_type: str, errors: bool) -> tuple[float, float, np.ndarray]:
    dataset = Dataset(copy.deepcopy(gt))
    results = copy.deepcopy(results)
    start, cpu = time.perf_counter(), time.process_time()
    result = evaluate_results(dataset, results, iou_types=(iou_type,), errors=errors)
    return time.perf_counter() - start, time.process_time() - cpu, np.asarray(result.stats[iou_type])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--gt-per-image", type=int, default=10)
    parser.add_argument("--dets-per-image", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iou-type", default="segm", choices=["segm", "bbox"])
    parser.add_argument("--repeats", type=int, default=5, help="runs of the fast engines; the best is kept")
    parser.add_argument("--skip-pycocotools", action="store_true")
    args = parser.parse_args()

    start = time.perf_counter()
    gt, results = make_case(args.images, args.gt_per_image, args.dets_per_image, args.size)
    print(
        f"generated {len(gt['images'])} images, {len(gt['annotations'])} GT, {len(results)} detections "
        f"in {time.perf_counter() - start:.1f}s; {platform.python_version()}, {platform.machine()}"
    )

    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    stats: dict[str, np.ndarray] = {}
    engines = {
        "faster-coco-eval": lambda: time_faster_coco_eval(gt, results, args.iou_type),
        "faster-coco-eval (1 IoU worker)": lambda: time_faster_coco_eval(
            gt, results, args.iou_type, rle_iou_max_workers=1
        ),
        "instaseg (metric only)": lambda: time_instaseg(gt, results, args.iou_type, errors=False),
        "instaseg (+ error breakdown, confusion)": lambda: time_instaseg(gt, results, args.iou_type, errors=True),
    }
    for _ in range(args.repeats):  # interleaved, so a busy moment on the machine hits every engine alike
        for name, run in engines.items():
            seconds, cpu_seconds, stats[name] = run()
            wall[name] = min(seconds, wall.get(name, math.inf))
            cpu[name] = min(cpu_seconds, cpu.get(name, math.inf))
    if not args.skip_pycocotools:
        wall["pycocotools"], cpu["pycocotools"], stats["pycocotools"] = time_pycocotools(gt, results, args.iou_type)

    reference_name = "pycocotools" if "pycocotools" in stats else "faster-coco-eval"
    print(
        f"\n| engine | wall s (best of {args.repeats}) | x faster-coco-eval | CPU s | x faster-coco-eval "
        f"| max abs stat difference vs {reference_name} |"
    )
    print("|---|---|---|---|---|---|")
    for name in wall:
        print(
            f"| {name} | {wall[name]:.2f} | {wall[name] / wall['faster-coco-eval']:.2f} | {cpu[name]:.2f} "
            f"| {cpu[name] / cpu['faster-coco-eval']:.2f} | {np.abs(stats[name] - stats[reference_name]).max():.1e} |"
        )


if __name__ == "__main__":
    main()

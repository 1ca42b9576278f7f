"""Load + validate a large COCO file: ``instaseg`` (Dataset.load + check_dataset without image files)
against ``pycocotools.coco.COCO()`` (parse + index only), timed in the same run on the same file.

    .venv/bin/python bench/bench_load.py [--images 5000] [--instances 50000] [--repeats 5]

The file is generated in a temporary folder: 640x480 images, blob-shaped polygons of 8 to 40
points (one in ten annotations made of two polygons) and one annotation in ten stored as compressed
RLE, like a real COCO export. A second file holds the same number of instances all as RLE (one in
ten uncompressed, like crowd regions) to time the RLE validation every verb runs when it reads a
dataset (``Dataset.validate``). Prints markdown tables; each ratio is a median instaseg time over
the median pycocotools time.
"""

from __future__ import annotations

import argparse
import contextlib
import io as std_io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from pycocotools.coco import COCO

from instaseg.core import io
from instaseg.core import masks as mask_ops
from instaseg.data import Dataset
from instaseg.data.check import check_dataset

WIDTH, HEIGHT = 640, 480


def blob_polygon(rng: np.random.Generator) -> list[float]:
    points = int(rng.integers(8, 41))
    cx, cy = rng.uniform(70, WIDTH - 70), rng.uniform(70, HEIGHT - 70)  # the largest blob reaches 68 px
    # A wobbly blob, like a hand-drawn outline: points around a centre at a smoothly varying radius.
    angles = np.sort(rng.uniform(0, 2 * np.pi, points))
    radius, wobble, lobes = rng.uniform(8, 50), rng.uniform(0.05, 0.35), int(rng.integers(2, 6))
    radii = radius * (1 + wobble * np.sin(lobes * angles + rng.uniform(0, 2 * np.pi)))
    xy = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return [round(float(v), 2) for v in xy.reshape(-1)]


def ellipse_rle(rng: np.random.Generator) -> dict:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    center = (int(rng.integers(60, WIDTH - 60)), int(rng.integers(60, HEIGHT - 60)))
    cv2.ellipse(
        mask, center, (int(rng.integers(8, 50)), int(rng.integers(8, 50))), float(rng.uniform(0, 180)), 0, 360, 1, -1
    )
    return mask_ops.encode(mask.astype(bool))


def uncompressed(rle: dict) -> dict:
    """The same mask as COCO's uncompressed RLE (a list of run lengths)."""
    mask = mask_ops.decode(rle, HEIGHT, WIDTH).T.reshape(-1)  # COCO runs go down the columns
    changes = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    edges = np.r_[0, changes, mask.size]
    runs = np.diff(edges).tolist()
    return {"size": [HEIGHT, WIDTH], "counts": [0, *runs] if mask[0] else runs}


def make_coco(num_images: int, num_instances: int, seed: int = 0, all_rle: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    images = [
        {"id": i + 1, "file_name": f"{i + 1:06d}.jpg", "width": WIDTH, "height": HEIGHT} for i in range(num_images)
    ]
    annotations = []
    for k in range(num_instances):
        if all_rle:
            segmentation = ellipse_rle(rng)
            segmentation = uncompressed(segmentation) if k % 10 == 4 else segmentation
        elif k % 10 == 9:
            segmentation = ellipse_rle(rng)
        else:
            segmentation = [blob_polygon(rng) for _ in range(2 if k % 10 == 4 else 1)]
        rle = mask_ops.to_rle(segmentation, HEIGHT, WIDTH)
        annotations.append(
            {
                "id": k + 1,
                "image_id": k % num_images + 1,
                "category_id": k % 8 + 1,
                "segmentation": segmentation,
                "bbox": [round(v, 2) for v in mask_ops.bbox(rle)],
                "area": mask_ops.area(rle),
                "iscrowd": 0,
            }
        )
    categories = [{"id": c + 1, "name": f"class{c + 1}", "supercategory": "thing"} for c in range(8)]
    return {"images": images, "annotations": annotations, "categories": categories}


def time_pycocotools(path: Path) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stdout(std_io.StringIO()):  # COCO() prints its progress
        COCO(str(path))
    return time.perf_counter() - start


def time_instaseg(path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    problems = check_dataset(Dataset.load(path), check_files=False)
    return time.perf_counter() - start, sum(p.severity == "error" for p in problems)


def time_validation(path: Path) -> tuple[float, float]:
    """Seconds for ``Dataset.load`` (parse, schema, ``validate``) and for ``validate`` alone."""
    start = time.perf_counter()
    dataset = Dataset.load(path, validate=False)
    parsed = time.perf_counter()
    dataset.validate()
    done = time.perf_counter()
    return done - start, done - parsed


def rle_table(args: argparse.Namespace, folder: str) -> None:
    path = Path(folder) / "instances_rle.json"
    io.write_json(path, make_coco(args.images, args.instances, seed=1, all_rle=True))
    size_mb = path.stat().st_size / 1e6
    theirs, loads, validations = [], [], []
    for _ in range(args.repeats):
        theirs.append(time_pycocotools(path))
        load, validation = time_validation(path)
        loads.append(load)
        validations.append(validation)
    theirs_s, load_s, validation_s = (statistics.median(v) for v in (theirs, loads, validations))
    print()
    print(
        f"| all-RLE file | {args.images:,} images, {args.instances:,} RLE instances (1 in 10 uncompressed), {size_mb:.0f} MB |"
    )
    print("|---|---|")
    print(f"| pycocotools `COCO()` load, median of {args.repeats} | {theirs_s:.2f} s |")
    print(f"| instaseg `Dataset.load` (parse, schema, `validate`), median of {args.repeats} | {load_s:.2f} s |")
    print(f"| of which `Dataset.validate` (ids, sizes, every RLE decoded and checked) | {validation_s:.2f} s |")
    print(f"| ratio validation / pycocotools load (target <= 2) | **{validation_s / theirs_s:.2f}** |")
    print(f"| ratio instaseg load / pycocotools load | **{load_s / theirs_s:.2f}** |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--instances", type=int, default=50000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "instances.json"
        io.write_json(path, make_coco(args.images, args.instances))
        size_mb = path.stat().st_size / 1e6
        ours, theirs = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            theirs.append(time_pycocotools(path))
            seconds, errors = time_instaseg(path)
            ours.append(seconds)
        if errors:  # a random blob may rightly earn a self-intersection warning, never an error
            sys.exit(f"the generated file should be valid, but check reported {errors} error(s)")

    ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
    print(f"| file | {args.images:,} images, {args.instances:,} instances, {size_mb:.0f} MB |")
    print("|---|---|")
    print(f"| pycocotools `COCO()` load, median of {args.repeats} | {theirs_s:.2f} s |")
    print(
        f"| instaseg `Dataset.load` + `check_dataset(check_files=False)`, median of {args.repeats} | {ours_s:.2f} s |"
    )
    print(f"| ratio instaseg / pycocotools (target <= 2) | **{ours_s / theirs_s:.2f}** |")
    with tempfile.TemporaryDirectory() as folder:
        rle_table(args, folder)


if __name__ == "__main__":
    main()

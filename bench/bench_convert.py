"""Time the acceptance conversions on ../shared/datasets against a pycocotools baseline.

The baseline ("peer") is the least any converter must do with the same labels: pycocotools loading
the produced COCO file and decoding every instance mask to pixels once (``COCO(json)`` + ``annToMask``). The
ratio says how many such passes a full conversion costs. Usage::

    .venv/bin/python bench/bench_convert.py [--repeat 3] [--shared ../shared/datasets]
"""

from __future__ import annotations

import argparse
import contextlib
import io as bytes_io
import tempfile
import time
from pathlib import Path

from pycocotools.coco import COCO

from instaseg.data.convert import convert


def _best_of(repeat: int, function, *args, **kwargs):
    """(fastest wall time in seconds, the last result) of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times), result


def _pycocotools_pass(coco_json: Path) -> None:
    with contextlib.redirect_stdout(bytes_io.StringIO()):  # COCO() prints progress
        coco = COCO(str(coco_json))
    for ann in coco.dataset["annotations"]:
        coco.annToMask(ann)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    args = parser.parse_args()
    shared = args.shared
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = [
            ("balloon train VIA -> COCO", shared / "balloon" / "train", "balloon.json", None, "balloon.json"),
            ("dsb2018 mask-files -> COCO", shared / "dsb2018_nuclei", "dsb.json", None, "dsb.json"),
            ("dsb2018 COCO -> YOLO", tmp / "dsb.json", "dsb-yolo", "yolo", "dsb.json"),
            ("dsb2018 YOLO -> COCO", tmp / "dsb-yolo", "dsb-back.json", None, "dsb-back.json"),
            ("coco128 YOLO -> COCO", shared / "coco128-seg", "c128.json", None, "c128.json"),
            ("coco128 COCO -> LabelMe", tmp / "c128.json", "c128-lm", "labelme", "c128.json"),
            ("coco128 LabelMe -> COCO", tmp / "c128-lm", "c128-back.json", None, "c128-back.json"),
            ("coco128 COCO -> semantic", tmp / "c128.json", "c128-sem", "semantic", "c128.json"),
            ("coco128 COCO -> panoptic", tmp / "c128.json", "c128-pan", "panoptic", "c128.json"),
        ]
        for label, src, out, fmt, reference in cases:
            ours, report = _best_of(args.repeat, convert, src, tmp / out, out_format=fmt, overwrite=True)
            peer, _ = _best_of(args.repeat, _pycocotools_pass, tmp / reference)
            rows.append((label, report.images, report.instances_written, ours, peer))
    print("| conversion | images | instances | instaseg s | pycocotools load+decode s | ratio |")
    print("|---|---|---|---|---|---|")
    for label, images, instances, ours, peer in rows:
        print(f"| {label} | {images} | {instances} | {ours:.2f} | {peer:.2f} | {ours / peer:.1f}x |")


if __name__ == "__main__":
    main()

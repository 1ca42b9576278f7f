"""Mask pasting: ``instaseg.core.masks.paste`` against torchvision's ``paste_masks_in_image``.

Two numbers, same run: the time to paste 100 masks of 28 x 28 into a 2000 x 1500 image (boxes of
25-1000 px), and how well each inverts the mask head's training targets: a disc mask is turned into
its target exactly as torchvision's Mask R-CNN does (``roi_align(aligned=False)`` over its box) and
pasted back; the IoU with the disc is the round-trip fidelity.

    .venv/bin/python bench/bench_paste.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import roi_align

import instaseg  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
from instaseg.core import masks as mask_ops


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    height, width, count = 1500, 2000, 100
    probabilities = rng.random((count, 28, 28)).astype(np.float32)
    corners = rng.uniform(0, [width - 1000, height - 1000], (count, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(25, 1000, (count, 2))], 1).astype(np.float32)
    ours = best_of(3, lambda: mask_ops.paste(probabilities, boxes, height, width))
    theirs = best_of(
        3,
        lambda: (
            paste_masks_in_image(
                torch.from_numpy(probabilities)[:, None], torch.from_numpy(boxes), (height, width)
            ).numpy()
            > 0.5
        ),
    )
    print(
        f"paste {count} masks into {width}x{height}: instaseg {ours:.3f} s, torchvision {theirs:.3f} s "
        f"({theirs / ours:.1f}x)"
    )

    size = 128
    yy, xx = np.mgrid[:size, :size] + 0.5
    round_trip = {"instaseg": [], "torchvision": []}
    for _ in range(200):
        (cy, cx), radius = rng.uniform(20, 108, 2), rng.uniform(4, 15)
        truth = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        box = np.array([mask_ops.box_from_mask(truth)], np.float32)
        target = roi_align(
            torch.from_numpy(truth.astype(np.float32))[None, None], torch.tensor([[0.0, *box[0]]]), (28, 28), 1.0
        )[0].numpy()
        for name, pasted in (
            ("instaseg", mask_ops.paste(target, box, size, size)[0]),
            (
                "torchvision",
                paste_masks_in_image(torch.from_numpy(target)[None], torch.from_numpy(box), (size, size))[0, 0].numpy()
                > 0.5,
            ),
        ):
            round_trip[name].append((pasted & truth).sum() / (pasted | truth).sum())
    for name, ious in round_trip.items():
        print(f"round trip of 200 discs (radius 4-15 px), {name}: mean IoU {np.mean(ious):.3f}, min {np.min(ious):.3f}")


if __name__ == "__main__":
    main()

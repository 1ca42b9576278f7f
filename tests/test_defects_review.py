"""Review defects of issue #17: large images, huge id ranges, and where ``noise`` writes.

The large-image and huge-range cases run in a child Python whose address space may grow by at most
``BOUND`` past what its imports took: the code as it was recursed (or built a billion ids) until it
ran out of memory, and the bound turns that into a failed test instead of a machine killed for memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from instaseg.core import io
from instaseg.core import masks as mask_ops
from instaseg.review.appearance import MAX_PIXELS, reduced_size

BOUND = 3 << 30
# Common camera shapes just over MAX_PIXELS (rounding to the nearest pixel kept them over it),
# wide and tall strips, and a shape a hair over the limit.
LARGE_SHAPES = [(2048, 1536), (2048, 1365), (4000, 1000), (1000, 4000), (1999, 1001)]

needs_linux = pytest.mark.skipif(sys.platform != "linux", reason="bounds the child's memory with RLIMIT_AS and /proc")


def painted(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """A grey RGB image of five bright discs on a dark noisy background, and the discs' masks (the centre one last)."""
    rng = np.random.default_rng(0)
    pixels = rng.normal(50, 8, (height, width)).astype(np.float32)
    radius = max(4, min(width, height) // 16)
    masks = []
    for fy, fx in [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75), (0.5, 0.5)]:
        disc = np.zeros((height, width), np.uint8)
        cv2.circle(disc, (int(fx * width), int(fy * height)), radius, 1, -1)
        masks.append(disc.astype(bool))
        pixels[masks[-1]] += 140
    return np.repeat(pixels.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2), np.stack(masks)


def appearance_report(shapes: list[tuple[int, int]]) -> list[dict]:
    """For each (width, height): what the appearance step makes of a painted image whose centre disc is unlabelled."""
    from instaseg.review.appearance import appearance, unlabelled_objects

    report = []
    for width, height in shapes:
        pixels, discs = painted(width, height)
        found = appearance(pixels, discs[:-1], object_side=2 * max(4, min(width, height) // 16))
        regions = unlabelled_objects(found, discs[:-1])
        best = regions[0][0] if regions else np.zeros((height, width), bool)
        report.append(
            {
                "shape": list(found.probability.shape),
                "reliability": found.reliability,
                "centre_iou": float((best & discs[-1]).sum() / (best | discs[-1]).sum()),
            }
        )
    return report


def run_bounded(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a child Python (the tests package importable) allowed ``BOUND`` more bytes of address space
    than its imports took; the timeout only stops a child that would never finish."""
    prelude = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        from tests import test_defects_review
        import instaseg.cli, instaseg.cli.review, instaseg.evaluation, instaseg.review
        try:
            import torch  # a lazy import of it later would count against the bound
        except ImportError:
            pass
        size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (size + {BOUND}, resource.RLIM_INFINITY))
    """)
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, timeout=1800
    )


def run_cli_bounded(*args: str | Path) -> subprocess.CompletedProcess:
    """``instaseg ARGS...`` in a bounded child (see ``run_bounded``)."""
    return run_bounded(f"instaseg.cli.main({[str(a) for a in args]!r})")


# -- 13: the appearance step on images over MAX_PIXELS ---------------------------------------------------
@pytest.mark.parametrize(
    "height, width",
    [
        (1536, 2048),
        (1365, 2048),
        (1001, 1999),
        (1000, 4000),
        (4000, 1000),
        (1, 10_000_000),
        (3, 5_000_000),
        (2001, 1000),
        (4096, 4096),
    ],
)
def test_the_reduced_size_is_within_the_limit_and_keeps_the_shape(height, width):
    reduced_width, reduced_height = reduced_size(height, width)
    assert reduced_width * reduced_height <= MAX_PIXELS
    if min(reduced_width, reduced_height) > 1:
        assert reduced_width * reduced_height > 0.99 * MAX_PIXELS
        assert abs(reduced_width / reduced_height - width / height) < 0.01 * width / height


def test_an_image_within_the_limit_keeps_its_size():
    assert reduced_size(1000, 2000) == (2000, 1000)


@needs_linux
def test_the_appearance_step_finishes_on_large_images_of_common_shapes():
    done = run_bounded(f"""
        import json
        print(json.dumps(test_defects_review.appearance_report({LARGE_SHAPES!r})))
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.splitlines()[-1])
    for (width, height), found in zip(LARGE_SHAPES, report, strict=True):
        assert found["shape"] == [height, width]
        assert found["reliability"] > 0.8, (width, height, found)
        assert found["centre_iou"] > 0.7, (width, height, found)


def test_wide_features_blur_a_shrunk_copy_and_match_the_full_size_ones(monkeypatch):
    from instaseg.review import appearance as look_module

    pixels, _ = painted(400, 300)
    monkeypatch.setattr(look_module, "MAX_DIRECT_SIGMA", float("inf"))
    exact = look_module.pixel_features(pixels, object_side=120)
    monkeypatch.undo()
    sigmas = []
    blur = cv2.GaussianBlur
    monkeypatch.setattr(
        cv2, "GaussianBlur", lambda image, size, sigma, *rest: sigmas.append(sigma) or blur(image, size, sigma, *rest)
    )
    approximate = look_module.pixel_features(pixels, object_side=120)
    # A blur's cost grows with its sigma: an object side of 120 px asks for up to 60.
    assert max(sigmas) <= look_module.MAX_DIRECT_SIGMA + 1e-6
    assert min(np.corrcoef(a, b)[0, 1] for a, b in zip(exact.T, approximate.T, strict=True)) > 0.99


def write_large_dataset(root: Path) -> tuple[Path, Path]:
    """Large images with four of their five discs labelled, and a COCO results file predicting all five."""
    images, annotations, results = [], [], []
    for image_id, (width, height) in enumerate([(2048, 1536), (4000, 1000), (1999, 1001)], start=1):
        pixels, discs = painted(width, height)
        name = f"large{image_id}.png"
        io.write_image(root / name, pixels)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for k, disc in enumerate(discs):
            rle = mask_ops.encode(disc)
            results.append({"image_id": image_id, "category_id": 1, "segmentation": rle, "score": 0.95})
            if k < len(discs) - 1:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "iscrowd": 0,
                        **mask_ops.annotation_fields(disc, True),
                    }
                )
    data = io.write_json(
        root / "data.json", {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "disc"}]}
    )
    return data, io.write_json(root / "results.json", results)


@needs_linux
def test_review_with_predictions_finishes_on_large_images(tmp_path):
    data, results = write_large_dataset(tmp_path)
    done = run_cli_bounded("review", data, "--pred", results, "--out", tmp_path / "review", "--max-pictures", 3)
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads((tmp_path / "review" / "review.json").read_text())
    missing = [s for s in document["suggestions"] if s["type"] == "missing_label"]
    assert sorted(s["image_id"] for s in missing) == [1, 2, 3], "each image's unlabelled disc is found"


# -- 14: accepted id ranges are checked against the suggestions, never built ------------------------------
def write_small_review(cli, root: Path) -> tuple[Path, int]:
    """A review of two small images, each with two confident predictions where no label is (missing labels)."""
    images, annotations, results = [], [], []
    for image_id in (1, 2):
        pixels, discs = painted(96, 64)
        io.write_image(root / f"small{image_id}.png", pixels)
        images.append({"id": image_id, "file_name": f"small{image_id}.png", "width": 96, "height": 64})
        annotations += [
            {
                "id": len(annotations) + k + 1,
                "image_id": image_id,
                "category_id": 1,
                "iscrowd": 0,
                **mask_ops.annotation_fields(disc, True),
            }
            for k, disc in enumerate(discs)
        ]
        for x0 in (2, 86):
            unlabelled = np.zeros((64, 96), bool)
            unlabelled[28:36, x0 : x0 + 8] = True
            results.append(
                {"image_id": image_id, "category_id": 1, "segmentation": mask_ops.encode(unlabelled), "score": 0.95}
            )
    data = io.write_json(
        root / "data.json", {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "disc"}]}
    )
    result = cli("review", data, "--pred", io.write_json(root / "results.json", results), "--out", root / "review")
    assert result.code == 0, result.stderr
    count = len(json.loads((root / "review" / "review.json").read_text())["suggestions"])
    assert count >= 3
    return root / "review", count


@needs_linux
def test_a_huge_accepted_range_is_refused_by_the_ids_it_names_in_vain(cli, tmp_path):
    review, count = write_small_review(cli, tmp_path)
    done = run_cli_bounded("review", "apply", review, "--accept", "1-1000000000", "--out", tmp_path / "fixed.json")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert f"no suggestion with id {count + 1}-1000000000 (its ids: 1-{count})" in done.stderr
    assert not (tmp_path / "fixed.json").exists()


def test_overlapping_ranges_accept_each_suggestion_once_and_reject_wins(cli, tmp_path):
    review, count = write_small_review(cli, tmp_path)
    result = cli(
        "review", "apply", review, "--accept", f"1-2,2-{count}", "--reject", "2", "--out", tmp_path / "fixed.json"
    )
    assert result.code == 0, result.stderr
    assert f"of {count - 1} accepted suggestions" in result.stdout


def test_unknown_ids_among_known_ones_are_named_as_ranges(cli, tmp_path):
    review, count = write_small_review(cli, tmp_path)
    wanted = f"1,{count + 1}-{count + 5},{count + 9}"
    result = cli("review", "apply", review, "--accept", wanted, "--out", tmp_path / "fixed.json")
    assert result.code == 2
    assert f"no suggestion with id {count + 1}-{count + 5},{count + 9} " in result.stderr
    assert not (tmp_path / "fixed.json").exists()


def test_a_backwards_range_is_refused(cli, tmp_path):
    review, _ = write_small_review(cli, tmp_path)
    result = cli("review", "apply", review, "--accept", "3-1", "--out", tmp_path / "fixed.json")
    assert result.code == 2 and "runs backwards" in result.stderr, result.stderr
    assert not (tmp_path / "fixed.json").exists()


# -- noise: writes only where --out says -------------------------------------------------------------------
def test_noise_requires_out_and_writes_nothing_beside_the_data(cli, tmp_path):
    pixels, discs = painted(96, 64)
    io.write_image(tmp_path / "a.png", pixels)
    data = io.write_json(
        tmp_path / "data.json",
        {
            "images": [{"id": 1, "file_name": "a.png", "width": 96, "height": 64}],
            "annotations": [
                {"id": k + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, **mask_ops.annotation_fields(d, True)}
                for k, d in enumerate(discs)
            ],
            "categories": [{"id": 1, "name": "disc"}],
        },
    )
    before = sorted(tmp_path.iterdir())
    result = cli("noise", data)
    assert result.code == 2 and "--out" in result.stderr, result.stdout + result.stderr
    assert sorted(tmp_path.iterdir()) == before

"""Issue #17 (COCO input): duplicate ids, malformed RLE and impossible image records are refused by
every verb that reads a COCO file, with one located line, while ``check`` keeps reporting them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from instaseg.core import io
from instaseg.core import masks as mask_ops
from tests.test_bad_input import Case, H, W, _coco


@pytest.fixture
def case(tmp_path):
    return Case(tmp_path)


def _rle_string(runs: list[int]) -> str:
    """Runs as a compressed COCO string, written the way pycocotools' ``rleToString`` does (negative
    runs included, which pycocotools itself never writes)."""
    chars = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        while True:
            c, x = x & 0x1F, x >> 5
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr(48 + (c | 0x20 if more else c)))
            if not more:
                break
    return "".join(chars)


def _runs(mask: np.ndarray) -> list[int]:
    """COCO run lengths (down the columns, starting with background) of a boolean mask."""
    flat = mask.T.reshape(-1).astype(np.int8)
    edges = np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]
    runs = np.diff(edges).tolist()
    return [0, *runs] if flat[0] else runs


SQUARE_MASK = np.zeros((H, W), bool)
SQUARE_MASK[4:14, 4:14] = True
SQUARE_RUNS = _runs(SQUARE_MASK)


def test_the_test_encoder_writes_what_pycocotools_writes():
    encoded = mask_utils.encode(np.asfortranarray(SQUARE_MASK.astype(np.uint8)))["counts"].decode()
    assert _rle_string(SQUARE_RUNS) == encoded


# -- defect 6: duplicate ids ------------------------------------------------------------------------
def _two_images_one_id():
    coco = _coco()
    coco["images"].append({"id": 1, "file_name": "b.png", "width": W, "height": H})
    coco["annotations"].append({**coco["annotations"][0], "id": 8})
    return coco


@pytest.mark.parametrize("verb", ["convert", "stats", "show", "eval"])
def test_duplicate_image_id_is_refused(case, cli, verb):
    case.image("a.png").image("b.png").data(_two_images_one_id())
    args = {
        "convert": ["convert", case.json, case.out, "--to", "yolo"],
        "stats": ["stats", case.json],
        "show": ["show", case.json, "--out", case.out],
        "eval": ["eval", case.json, case.json],
    }[verb]
    case.refused(cli(*args), case.json, "images[1]", "id 1 is also used by images[0]")


def test_check_still_reports_a_duplicate_image_id(case, cli):
    case.image("a.png").image("b.png").data(_two_images_one_id())
    case.reported(cli("check", case.json), "image id 1", "used more than once")


def test_duplicate_category_id_is_refused(case, cli):
    coco = _coco()
    coco["categories"].append({"id": 1, "name": "nucleus"})  # its annotations would all be 'nucleus'
    case.image().data(coco)
    case.refused(cli("convert", case.json, case.out, "--to", "labelme"), case.json, "categories[1]", "id 1")
    case.reported(cli("check", case.json), "category id 1", "used more than once")


def test_duplicate_annotation_id_is_refused(case, cli):
    coco = _coco()
    coco["annotations"].append({**coco["annotations"][0], "segmentation": [[20, 4, 30, 4, 30, 14, 20, 14]]})
    case.image().data(coco)
    out = case.root / "out.json"
    case.refused(cli("convert", case.json, out), case.json, "annotations[1]", "id 7 is also used by annotations[0]")
    case.reported(cli("check", case.json), "annotation id 7", "used more than once")


# -- defect 7: malformed RLE ------------------------------------------------------------------------
MALFORMED_RLE = {
    "short-sum": ({"size": [H, W], "counts": SQUARE_RUNS[:-1]}, "stop short of the image"),
    "float-counts": ({"size": [H, W], "counts": [float(r) for r in SQUARE_RUNS]}, "whole numbers"),
    "negative-counts": ({"size": [H, W], "counts": [10, -5, W * H - 5]}, "negative run"),
    "garbage-string": ({"size": [H, W], "counts": "not an RLE!"}, "outside the COCO alphabet"),
    "unfinished-string": ({"size": [H, W], "counts": _rle_string(SQUARE_RUNS) + "b"}, "middle of a number"),
    "negative-run-string": ({"size": [H, W], "counts": _rle_string([100, -20, 20, W * H - 100])}, "negative run"),
    "string-short-sum": ({"size": [H, W], "counts": _rle_string(SQUARE_RUNS[:-1])}, "stop short of the image"),
    "string-long-sum": ({"size": [H, W], "counts": _rle_string([*SQUARE_RUNS, 5])}, "run past the end of the image"),
    "other-size": ({"size": [H + 1, W], "counts": _rle_string([W * (H + 1)])}, "RLE size is 25x32"),
    "size-not-numbers": ({"size": ["24", "32"], "counts": _rle_string([W * H])}, "'size' must be"),
    "no-counts": ({"size": [H, W]}, "needs 'size'"),
}


@pytest.mark.parametrize("segmentation, message", MALFORMED_RLE.values(), ids=MALFORMED_RLE)
def test_malformed_rle_is_refused_where_the_dataset_is_read(case, cli, segmentation, message):
    case.image().data(_coco(segmentation=segmentation))
    for args in (
        ["convert", case.json, case.out, "--to", "yolo"],
        ["stats", case.json],
        ["eval", case.json, case.json],
    ):
        case.refused(cli(*args), case.json, "annotation id 7 (image id 1)", message)


@pytest.mark.parametrize("segmentation, message", MALFORMED_RLE.values(), ids=MALFORMED_RLE)
def test_check_reports_every_malformed_rle_the_other_verbs_refuse(case, cli, segmentation, message):
    case.image().data(_coco(segmentation=segmentation))
    case.reported(cli("check", case.json), "annotation id 7 (image id 1)", message)


@pytest.mark.parametrize("segmentation, message", MALFORMED_RLE.values(), ids=MALFORMED_RLE)
def test_malformed_rle_in_results_is_refused(case, cli, segmentation, message):
    case.image().data()
    results = case.root / "results.json"
    results.write_text(json.dumps([{"image_id": 1, "category_id": 1, "segmentation": segmentation, "score": 0.9}]))
    case.before = case.files()
    case.refused(cli("eval", case.json, results), results, "result 0 (image id 1)")


def test_well_formed_rle_still_converts(case, cli):
    compressed = {"size": [H, W], "counts": _rle_string(SQUARE_RUNS)}
    coco = _coco(segmentation=compressed)
    coco["annotations"].append(
        {**coco["annotations"][0], "id": 8, "segmentation": {"size": [H, W], "counts": SQUARE_RUNS}}
    )
    case.image().data(coco)
    result = cli("convert", case.json, case.out, "--to", "mask-files")
    assert result.code == 0, result.stderr
    assert "wrote 2 instances" in result.stdout + result.stderr
    out = case.root / "out.json"
    assert cli("convert", case.json, out).code == 0
    for ann in io.read_json(out)["annotations"]:
        assert (mask_ops.decode(ann["segmentation"], H, W) == SQUARE_MASK).all()


def _reference_problem(counts: str, height: int, width: int) -> str | None:
    """pycocotools' ``rleFrString`` in plain Python, saying what makes the string unusable."""
    data, runs, p = counts.encode(), [], 0
    if any(c < 48 or c > 111 for c in data):
        return "alphabet"
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p == len(data):
                return "unfinished"
            c = data[p] - 48
            x |= (c & 0x1F) << 5 * k
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << 5 * k
        if k > 6:
            return "too large"
        runs.append(x + runs[-2] if len(runs) > 2 else x)
    if min(runs, default=0) < 0:
        return "negative"
    return None if sum(runs) == height * width else "sum"


def test_compressed_rle_check_agrees_with_a_plain_decoder():
    rng = np.random.default_rng(0)
    rles, sizes = [], []
    for _ in range(1500):
        height, width = int(rng.integers(1, 3000)), int(rng.integers(1, 3000))
        mask = np.zeros((height, width), np.uint8)
        for _ in range(int(rng.integers(0, 4))):
            y, x = int(rng.integers(height)), int(rng.integers(width))
            mask[y : y + int(rng.integers(1, 60)), x : x + int(rng.integers(1, 600))] = 1
        counts = mask_utils.encode(np.asfortranarray(mask))["counts"].decode()
        damage = int(rng.integers(4))
        if damage == 1 and counts:  # one character changed
            j = int(rng.integers(len(counts)))
            counts = counts[:j] + chr(int(rng.integers(48, 112))) + counts[j + 1 :]
        elif damage == 2:  # cut short
            counts = counts[: int(rng.integers(len(counts) + 1))]
        elif damage == 3:  # noise, sometimes long numbers or bytes outside the alphabet
            counts += "".join(chr(int(rng.integers(40, 115))) for _ in range(int(rng.integers(0, 10))))
        rles.append({"size": [height, width], "counts": counts})
        sizes.append((height, width))
    problems = mask_ops.invalid_rles(rles, sizes)
    expected = {
        k for k, (rle, size) in enumerate(zip(rles, sizes, strict=True)) if _reference_problem(rle["counts"], *size)
    }
    assert set(problems) == expected
    assert 100 < len(expected) < len(rles) - 100  # both kinds were tried


# -- defect 15 (part): impossible image records --------------------------------------------------------
@pytest.mark.parametrize("width, height", [(0, H), (W, -3)])
def test_image_size_that_is_not_positive_is_refused(case, cli, width, height):
    case.image().data(_coco(width=width, height=height))
    case.refused(cli("convert", case.json, case.out, "--to", "yolo"), case.json, "image id 1", "not positive")
    case.refused(cli("stats", case.json), case.json, "image id 1", "not positive")
    case.refused(cli("train", case.json, "--epochs", "1", "--out", case.out), case.json, "image id 1", "not positive")
    case.reported(cli("check", case.json, "--no-files"), "image id 1", "is not positive")


@pytest.mark.parametrize("width", [32.5, "32", None])
def test_image_size_that_is_not_a_whole_number_is_refused(case, cli, width):
    case.image().data(_coco(width=width))
    for args in (
        ["convert", case.json, case.out, "--to", "yolo"],
        ["train", case.json, "--epochs", "1", "--out", case.out],
    ):
        case.refused(cli(*args), case.json, "images[0] (id 1)", "field 'width'")


@pytest.mark.parametrize("file_name", ["sub", "sub/", "", "."])
def test_file_name_that_names_a_folder_is_refused(case, cli, file_name):
    (case.root / "sub").mkdir()
    case.image().data(_coco(file_name=file_name))
    for args in (
        ["convert", case.json, case.out, "--to", "yolo"],
        ["show", case.json, "--out", case.out],
        ["stats", case.json],
    ):
        case.refused(cli(*args), case.json, "image id 1", "names a folder")
    case.reported(cli("check", case.json), "image id 1")


@pytest.mark.parametrize("file_name", ["../a.png", "/etc/hosts"], ids=["parent", "absolute"])
def test_file_name_outside_the_image_root_is_refused(case, cli, file_name):
    case.image().data(_coco(file_name=file_name))
    for args in (["convert", case.json, case.root / "out.json"], ["stats", case.json]):
        case.refused(cli(*args), case.json, "image id 1", "escapes the dataset root")
    case.reported(cli("check", case.json), "image id 1", "escapes the dataset root")


def test_declared_size_too_large_to_decode_is_refused(case, cli):
    case.image().data(_coco(width=10**6, height=10**6))
    for args in (["convert", case.json, case.out, "--to", "masks"], ["stats", case.json]):
        case.refused(cli(*args), case.json, "image id 1", "too large to decode")

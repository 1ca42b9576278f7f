"""A general guard: every reader, fed generated junk, refuses it in one located line and writes nothing.

Each case starts from a tiny valid dataset with a single label (so a reader that drops the broken
label instead of refusing it has kept none, which is an error too), puts one generated bad value
into one place, and runs ``convert``. Whatever the value, the verb must exit 2 with one line
``error: <file>: ...`` naming the file and record at fault (or the source that kept no label), show
no traceback, and leave nothing behind.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import assert_one_line_error, run_cli

W, H = 32, 24
SQUARE_X, SQUARE_Y = [4, 14, 14, 4], [4, 4, 14, 14]
SQUARE = [c for xy in zip(SQUARE_X, SQUARE_Y, strict=True) for c in xy]

NOT_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
WRONG_TYPE = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.lists(st.lists(st.integers(), max_size=2), min_size=1, max_size=2),
)
NEGATIVE = st.one_of(st.integers(max_value=-1, min_value=-(10**12)), st.floats(max_value=-0.5, min_value=-1e12))
HUGE = st.integers(min_value=10**9, max_value=10**15)
# A size must be a positive whole number of pixels no larger than the image's own.
BAD_SIZE = st.one_of(NOT_FINITE, WRONG_TYPE, NEGATIVE, st.just(0), HUGE, st.just(2.5))
# A list of coordinates whose every entry must be a finite number.
BAD_COORDINATES = st.one_of(
    WRONG_TYPE,
    st.lists(st.one_of(NOT_FINITE, WRONG_TYPE), min_size=1, max_size=3).map(
        lambda junk: SQUARE[: 8 - len(junk)] + junk
    ),
)


def bad_axis(values: list[int]) -> st.SearchStrategy:
    """One axis of a VIA outline (its x or its y values) with junk among or instead of them."""
    junk = st.lists(st.one_of(NOT_FINITE, WRONG_TYPE), min_size=1, max_size=2)
    return st.one_of(WRONG_TYPE, junk.map(lambda bad: values[: len(values) - len(bad)] + bad))


BAD_ID = st.one_of(NOT_FINITE, WRONG_TYPE, st.just(2.5))


def set_path(data: Any, path: tuple, value: Any) -> Any:
    """A deep copy of ``data`` with the item at ``path`` (keys and indexes) replaced by ``value``."""
    data = copy.deepcopy(data)
    holder = data
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    return data


# -- the formats: a valid single-label dataset each, and where junk goes ------------------------
def coco_dataset() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
        "categories": [{"id": 1, "name": "cell"}],
        "annotations": [
            {
                "id": 7,
                "image_id": 1,
                "category_id": 1,
                "segmentation": [SQUARE],
                "bbox": [4, 4, 10, 10],
                "area": 100,
                "iscrowd": 0,
            }
        ],
    }


def via_dataset() -> dict:
    region = {
        "shape_attributes": {"name": "polygon", "all_points_x": SQUARE_X, "all_points_y": SQUARE_Y},
        "region_attributes": {"class": "cell"},
    }
    return {"a.png100": {"filename": "a.png", "size": 100, "regions": [region], "file_attributes": {}}}


def labelme_dataset() -> dict:
    shape = {
        "label": "cell",
        "points": [list(p) for p in zip(SQUARE_X, SQUARE_Y, strict=True)],
        "shape_type": "polygon",
        "group_id": None,
        "flags": {},
    }
    return {
        "version": "5.5.0",
        "shapes": [shape],
        "imagePath": "a.png",
        "imageData": None,
        "imageHeight": H,
        "imageWidth": W,
        "flags": {},
    }


def labelme_without_its_image() -> dict:
    return {**labelme_dataset(), "imagePath": "elsewhere/a.png"}


JSON_CASES: dict[str, tuple[Callable[[], dict], str, dict[tuple, st.SearchStrategy]]] = {
    "coco": (
        coco_dataset,
        "data.json",
        {
            ("images", 0, "width"): BAD_SIZE,
            ("images", 0, "height"): BAD_SIZE,
            ("images", 0, "id"): BAD_ID,
            ("images", 0, "file_name"): st.one_of(
                WRONG_TYPE.filter(lambda v: not isinstance(v, str)), st.sampled_from(["../a.png", "/etc/a.png"])
            ),
            ("annotations", 0, "segmentation"): st.one_of(
                WRONG_TYPE.filter(lambda v: v != []),
                BAD_COORDINATES.map(lambda c: [c]),
                st.fixed_dictionaries(
                    {
                        "size": st.just([H, W]),
                        "counts": st.one_of(
                            WRONG_TYPE, st.lists(st.one_of(NEGATIVE, NOT_FINITE), min_size=1, max_size=3)
                        ),
                    }
                ),
                st.fixed_dictionaries({"size": st.one_of(WRONG_TYPE, st.just([H + 1, W])), "counts": st.just([W * H])}),
            ),
            ("annotations", 0, "image_id"): st.one_of(BAD_ID, st.just(99)),
            ("annotations", 0, "category_id"): st.one_of(BAD_ID, st.just(99)),
            ("categories", 0, "id"): BAD_ID,
            ("categories", 0, "name"): WRONG_TYPE.filter(lambda v: not isinstance(v, str)),
            ("images",): st.one_of(st.just({}), st.just("images"), st.just([[]])),
            ("annotations",): st.one_of(st.just({}), st.just(7), st.just([["a"]])),
        },
    ),
    "via": (
        via_dataset,
        "via_region_data.json",
        {
            ("a.png100", "regions", 0, "shape_attributes", "all_points_x"): bad_axis(SQUARE_X),
            ("a.png100", "regions", 0, "shape_attributes", "all_points_y"): bad_axis(SQUARE_Y),
            ("a.png100", "regions", 0, "shape_attributes"): st.one_of(WRONG_TYPE, st.just({"name": "polygon"})),
            ("a.png100", "regions", 0): WRONG_TYPE,
            ("a.png100", "filename"): st.one_of(
                WRONG_TYPE.filter(lambda v: not isinstance(v, str)), st.sampled_from(["", "../a.png", "b.png"])
            ),
        },
    ),
    "labelme": (
        labelme_dataset,
        "a.json",
        {
            ("shapes", 0, "points"): st.one_of(
                WRONG_TYPE,
                st.lists(st.lists(st.one_of(NOT_FINITE, WRONG_TYPE), min_size=2, max_size=2), min_size=3, max_size=4),
            ),
            ("shapes", 0, "label"): WRONG_TYPE.filter(lambda v: not isinstance(v, str) or v == ""),
            ("shapes", 0, "shape_type"): st.sampled_from(["hexagon", 5, ["polygon"]]),
            ("shapes", 0): WRONG_TYPE,
        },
    ),
    # LabelMe trusts the image file's size over imageWidth/imageHeight: they matter when it is missing.
    "labelme-without-image": (
        labelme_without_its_image,
        "a.json",
        {("imageWidth",): BAD_SIZE, ("imageHeight",): BAD_SIZE},
    ),
}


def _json_case(name: str):
    make, file_name, slots = JSON_CASES[name]
    return (
        st.sampled_from(sorted(slots, key=str))
        .flatmap(lambda path: st.tuples(st.just(path), slots[path]))
        .map(lambda junk: (file_name, set_path(make(), *junk), junk))
    )


def assert_refused(tmp_path: Path, src: Path, culprit: Path, junk: Any, *options: str) -> None:
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = run_cli("convert", src, tmp_path.parent / "out.json", "--class", "cell", *options)
    assert_one_line_error(result)
    # A reader refuses the record itself, or drops it and then refuses a source that kept no label.
    assert str(culprit) in result.stderr or result.stderr.startswith(f"error: {src}: kept 0 of"), (junk, result.stderr)
    assert "Traceback" not in result.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "nothing may be written"
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == [tmp_path.name], "nothing may be written beside it"


def _fresh(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("junk") / "data"
    root.mkdir()
    Image.new("RGB", (W, H), (40, 80, 120)).save(root / "a.png")
    return root


# JUNK_EXAMPLES=1000 for a longer hunt; CI runs a fixed sequence (derandomized), so that a red run is reproducible.
JUNK_SETTINGS = settings(
    max_examples=int(os.environ.get("JUNK_EXAMPLES", 40)),
    derandomize=bool(os.environ.get("CI")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("fmt", sorted(JSON_CASES))
def test_every_json_reader_refuses_junk_in_one_located_line(tmp_path_factory, fmt):
    @JUNK_SETTINGS
    @given(_json_case(fmt))
    def check(case):
        file_name, data, junk = case
        root = _fresh(tmp_path_factory)
        (root / file_name).write_text(
            json.dumps(data)
        )  # json writes NaN and Infinity, as Python users' files have them
        assert_refused(root, root / file_name if fmt == "coco" else root, root / file_name, junk)

    check()


BAD_YOLO_TOKEN = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "abc", "0x10", "1e400", "0,5", "--"]),
    st.text(alphabet="#@!%[]{}", min_size=1, max_size=3),
)


@JUNK_SETTINGS
@given(position=st.integers(0, 6), token=BAD_YOLO_TOKEN, extra=st.sampled_from(["", " 0.5", " 0.5 0.5 0.1"]))
def test_the_yolo_reader_refuses_junk_in_one_located_line(tmp_path_factory, position, token, extra):
    root = _fresh(tmp_path_factory)
    (root / "images").mkdir()
    (root / "a.png").rename(root / "images" / "a.png")
    (root / "labels").mkdir()
    values = ["0", "0.1", "0.1", "0.5", "0.1", "0.5", "0.5"]
    values[position] = token
    line = " ".join(values) + (extra if position else "")
    (root / "labels" / "a.txt").write_text(line + "\n")
    (root / "data.yaml").write_text("names: [cell]\n")
    assert_refused(root, root, root / "labels" / "a.txt", line)


# The PNG readers have no fields to spoil: their junk is the file itself (not a PNG, cut short, or a
# label map that fits no image; big enough to hold its one label, which an empty map would not lose).
JUNK_MASK = st.one_of(
    st.binary(max_size=64).map(lambda data: ("bytes", data)),
    st.floats(0.05, 0.6).map(lambda share: ("truncated", share)),  # cut inside the pixel data, before IEND
    st.tuples(st.integers(15, 3 * W), st.integers(15, 3 * H))
    .filter(lambda size: size != (W, H))
    .map(lambda size: ("size", size)),
)


def _junk_png(path: Path, junk: tuple) -> None:
    kind, value = junk
    if kind == "bytes":
        path.write_bytes(value)
        return
    ids = Image.new("L", value if kind == "size" else (W, H), 0)
    ids.paste(1, (4, 4, 14, 14))
    ids.save(path)
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * value)])


@JUNK_SETTINGS
@given(fmt=st.sampled_from(["masks", "mask-files"]), junk=JUNK_MASK)
def test_the_png_readers_refuse_a_junk_mask_in_one_located_line(tmp_path_factory, fmt, junk):
    root = _fresh(tmp_path_factory)
    # masks: images/ beside masks/, one instance-id PNG per image;
    # mask-files (DSB2018): <id>/images/<id>.png and <id>/masks/, one PNG per instance.
    sample = root if fmt == "masks" else root / "a"
    (sample / "images").mkdir(parents=True)
    (root / "a.png").rename(sample / "images" / "a.png")
    (sample / "masks").mkdir()
    mask = sample / "masks" / ("a.png" if fmt == "masks" else "0.png")
    _junk_png(mask, junk)
    assert_refused(root, root, mask, junk, "--from", fmt)

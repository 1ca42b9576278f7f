"""Bad input never shows a traceback: each case names the culprit (file and record) and writes nothing.

Every case runs a verb on a tiny dataset made wrong in one way. Verbs that refuse exit with 2 and
one ``error:`` line; ``check`` reports the problem (exit 1) rather than refusing. Images in odd but
valid modes (grayscale, RGBA, 16-bit, EXIF-rotated, unicode names) must simply work.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instaseg.core import io
from tests.conftest import assert_one_line_error

W, H = 32, 24
SQUARE = [4, 4, 14, 4, 14, 14, 4, 14]


def _coco(file_name="a.png", width=W, height=H, **annotation):
    ann = {
        "id": 7,
        "image_id": 1,
        "category_id": 1,
        "segmentation": [SQUARE],
        "bbox": [4, 4, 10, 10],
        "area": 100,
        "iscrowd": 0,
    }
    ann.update(annotation)
    return {
        "images": [{"id": 1, "file_name": file_name, "width": width, "height": height}],
        "categories": [{"id": 1, "name": "cell"}],
        "annotations": [ann],
    }


class Case:
    """A dataset folder: ``root/data.json`` plus images; remembers its files to prove nothing is written."""

    def __init__(self, root: Path):
        self.root = root
        self.json = root / "data.json"
        self.out = root / "out"

    def image(self, name="a.png", mode="RGB", size=(W, H), value=(40, 80, 120), **save):
        Image.new(mode, size, value).save(self.root / name, **save)
        return self

    def data(self, coco=None, raw: bytes | None = None):
        self.json.write_bytes(raw if raw is not None else io.dumps_json(coco if coco is not None else _coco()))
        self.before = self.files()
        return self

    def files(self):
        return sorted((str(p.relative_to(self.root)), p.stat().st_size) for p in self.root.rglob("*"))

    def refused(self, result, *culprits):
        """The verb refused with one line naming every culprit, and wrote nothing."""
        assert_one_line_error(result, *culprits)
        assert self.files() == self.before, "nothing may be written"

    def reported(self, result, *culprits, code=1):
        """``check`` reported the problem on stdout (exit 1 for errors) and wrote nothing."""
        assert result.code == code, result.stdout + result.stderr
        for culprit in culprits:
            assert str(culprit) in result.stdout, (culprit, result.stdout)
        assert self.files() == self.before


@pytest.fixture
def case(tmp_path):
    return Case(tmp_path)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size but holds no pixels: enough for any header reader."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


# -- the dataset file itself ------------------------------------------------------------------
@pytest.mark.parametrize("verb", ["check", "stats", "show"])
def test_malformed_json(case, cli, verb):
    case.image().data(raw=b'{"images": [')
    case.refused(cli(verb, case.json, *(["--out", case.out] if verb == "show" else [])), case.json, "malformed JSON")


def test_empty_file(case, cli):
    case.image().data(raw=b"")
    case.refused(cli("check", case.json), case.json, "malformed JSON")


def test_non_utf8_json(case, cli):
    case.image().data(raw=io.dumps_json(_coco()).replace(b"a.png", b"\xff\xfe.png"))
    case.refused(cli("stats", case.json), case.json, "malformed JSON")


def test_list_at_top_level(case, cli):
    case.image().data(raw=b"[1, 2, 3]")
    case.refused(cli("check", case.json), case.json, "top level is not an object")


def test_missing_images_list(case, cli):
    coco = _coco()
    del coco["images"]
    coco["info"] = {}
    case.image().data(coco)
    case.refused(cli("stats", case.json), case.json, "missing 'images' list")


def test_wrong_type_names_the_record(case, cli):
    coco = _coco()
    coco["images"][0]["width"] = "32"
    case.image().data(coco)
    case.refused(cli("show", case.json, "--out", case.out), case.json, "images[0] (id 1)", "field 'width' has str")


def test_annotation_that_is_not_an_object(case, cli):
    coco = _coco()
    coco["annotations"].append([1, 2, 3])
    case.image().data(coco)
    case.refused(cli("check", case.json), case.json, "annotations[1]", "not an object")


def test_missing_dataset_file(case, cli):
    case.image().data()
    case.refused(cli("check", case.root / "nope.json"), "nope.json")


# -- image files --------------------------------------------------------------------------------
def test_truncated_jpeg(case, cli):
    pixels = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(case.root / "full.jpg")
    (case.root / "a.jpg").write_bytes((case.root / "full.jpg").read_bytes()[:-200])
    case.data(_coco("a.jpg"))
    case.reported(cli("check", case.json), case.root / "a.jpg", "image id 1", "truncated")
    case.refused(cli("show", case.json, "--out", case.out), case.root / "a.jpg", "truncated")


def test_text_file_named_png(case, cli):
    (case.root / "a.png").write_text("hello")
    case.data()
    case.reported(cli("check", case.json), case.root / "a.png", "image id 1", "not an image")
    case.refused(cli("show", case.json, "--out", case.out), case.root / "a.png", "not an image")


def test_missing_image_file(case, cli):
    case.data()
    case.reported(cli("check", case.json), case.root / "a.png", "image id 1", "not found")
    case.refused(cli("show", case.json, "--out", case.out), case.root / "a.png", "not found")


def test_png_header_claiming_a_huge_size(case, cli):
    (case.root / "a.png").write_bytes(png_header(100_000, 100_000))
    case.data(_coco(width=100_000, height=100_000))
    case.reported(cli("check", case.json), case.root / "a.png", "image id 1", "too large")
    case.refused(cli("show", case.json, "--out", case.out), case.root / "a.png", "too large")


def test_image_size_differs_from_the_json(case, cli):
    case.image(size=(W + 1, H)).data()
    case.reported(cli("check", case.json), "image id 1", "33x24 but the JSON says 32x24")
    case.refused(cli("show", case.json, "--out", case.out), "image id 1", "33x24")


@pytest.mark.parametrize(
    "mode, value, save",
    [("L", 100, {}), ("RGBA", (10, 200, 30, 0), {}), ("I;16", 40000, {}), ("P", 5, {}), ("1", 1, {})],
    ids=["grayscale", "rgba", "16-bit", "palette", "1-bit"],
)
def test_unusual_image_modes_just_work(case, cli, mode, value, save):
    case.image(mode=mode, value=value, **save).data()
    assert cli("check", case.json).code == 0
    r = cli("show", case.json, "--out", case.out)
    assert r.code == 0, r.stderr
    with Image.open(case.out / "a.png") as picture:
        assert picture.mode == "RGB"


def test_exif_rotated_image(case, cli):
    img = Image.new("RGB", (W, H), (90, 90, 90))
    exif = img.getexif()
    exif[0x0112] = 6  # shown turned by 90 degrees, i.e. H x W
    img.save(case.root / "a.jpg", exif=exif)
    case.data(_coco("a.jpg", width=H, height=W))  # the size as displayed: fine
    assert cli("check", case.json).code == 0
    assert cli("show", case.json, "--out", case.out, "--limit", "1").code == 0
    with Image.open(case.out / "a.png") as picture:
        assert picture.size[0] < picture.size[1]  # portrait, as displayed

    other = Case(case.root / "stored")
    other.root.mkdir()
    img.save(other.root / "a.jpg", exif=exif)
    other.data(_coco("a.jpg"))  # the size as stored: reported, with the likely cause
    other.reported(cli("check", other.json), "image id 1", "EXIF")


@pytest.mark.parametrize("name", ["../a.png", "/etc/hosts"], ids=["parent", "absolute"])
def test_path_escaping_the_dataset_root(case, cli, name):
    case.image().data(_coco(name))
    case.reported(cli("check", case.json), "image id 1", "escapes the dataset root")
    case.refused(cli("show", case.json, "--out", case.out), "image id 1", name)


def test_unicode_file_names(case, cli):
    name = "bälløn 猫.png"
    case.image(name).data(_coco(name))
    assert cli("check", case.json).code == 0
    r = cli("show", case.json, "--out", case.out)
    assert r.code == 0, r.stderr
    assert (case.out / name).is_file()


# -- annotations --------------------------------------------------------------------------------
def test_empty_dataset(case, cli):
    case.data({"images": [], "annotations": [], "categories": []})
    case.reported(cli("check", case.json), "the dataset has no images")
    case.refused(cli("show", case.json, "--out", case.out), case.json, "no images")
    r = cli("stats", case.json, "--json")
    assert r.code == 0 and '"images": 0' in r.stdout


def test_unknown_category(case, cli):
    case.image().data(_coco(category_id=9))
    case.reported(cli("check", case.json), "annotation id 7 (image id 1)", "category id 9 is not in the dataset")
    case.refused(cli("show", case.json, "--out", case.out), case.json, "annotation id 7 (image id 1)", "category id 9")


def test_empty_masks(case, cli):
    case.image().data(_coco(segmentation=[]))
    case.reported(cli("check", case.json), "annotation id 7 (image id 1)", "no mask")
    tiny = Case(case.root / "tiny")
    tiny.root.mkdir()
    tiny.image().data(_coco(segmentation=[[4, 4, 5, 4, 4.5, 4.2]]))
    tiny.reported(cli("check", tiny.json), "annotation id 7 (image id 1)", "encloses no pixel")


def test_odd_polygon_cannot_be_drawn(case, cli):
    case.image().data(_coco(segmentation=[SQUARE[:-1]]))
    case.refused(cli("show", case.json, "--out", case.out), case.json, "annotation id 7 (image id 1)", "odd number")


def test_rle_of_another_size_cannot_be_drawn(case, cli):
    case.image().data(_coco(segmentation={"size": [H + 1, W], "counts": "0" * 4}))
    case.refused(cli("show", case.json, "--out", case.out), "annotation id 7 (image id 1)", "RLE size")


def test_out_of_bounds_polygons(case, cli):
    case.image().data(_coco(segmentation=[[20, 4, 40, 4, 40, 14, 20, 14]], bbox=[20, 4, 12, 10], area=120))
    case.reported(cli("check", case.json), "annotation id 7 (image id 1)", "outside the 32x24 image", code=0)
    far = Case(case.root / "far")
    far.root.mkdir()
    far.image().data(_coco(segmentation=[[4, 4, 9e9, 4, 4, 14]]))
    far.reported(cli("check", far.json), "annotation id 7 (image id 1)", "far outside")
    far.refused(cli("show", far.json, "--out", far.out), "annotation id 7 (image id 1)", "far outside")


# -- outputs ------------------------------------------------------------------------------------
def test_existing_outputs_need_overwrite(case, cli):
    case.image().data(_coco(bbox=[0, 0, 1, 1]))
    case.out.mkdir()
    (case.out / "keep.txt").write_text("mine")
    (case.root / "fixed.json").write_text("{}")
    (case.root / "plot.png").write_text("mine")
    case.before = case.files()
    case.refused(cli("show", case.json, "--out", case.out), case.out, "--overwrite")
    case.refused(cli("check", case.json, "--fix", case.root / "fixed.json"), "fixed.json", "--overwrite")
    case.refused(cli("stats", case.json, "--plot", case.root / "plot.png"), "plot.png", "--overwrite")


def test_plot_format_must_be_an_image_format(case, cli):
    case.image().data()
    case.refused(cli("stats", case.json, "--plot", case.root / "plot.txt"), "plot.txt", ".png")


def test_convert_refuses_malformed_input_and_writes_nothing(case, cli):
    case.image().data(raw=b'{"images": [}')
    case.refused(cli("convert", case.json, case.root / "converted.json"), case.json)


def test_two_images_that_would_share_an_overlay(case, cli):
    coco = _coco()
    coco["images"].append({"id": 2, "file_name": "a.jpg", "width": W, "height": H})
    case.image().image("a.jpg").data(coco)
    case.refused(
        cli("show", case.json, "--out", case.out), case.json, "image id 2", "image id 1 is drawn to the same file a.png"
    )


def test_stats_names_an_annotation_it_cannot_measure(case, cli):
    coco = _coco(segmentation=[[4, 4, "x", 4, 14, 14]])
    del coco["annotations"][0]["area"]
    case.image().data(coco)
    case.refused(cli("stats", case.json), case.json, "annotation id 7 (image id 1)", "cannot measure")


def test_convert_refuses_to_replace_an_output(case, cli):
    case.image().data()
    (case.root / "converted.json").write_text("{}")
    case.before = case.files()
    case.refused(cli("convert", case.json, case.root / "converted.json"), "converted.json", "--overwrite")


def test_rle_whose_runs_overflow_the_image(case, cli):
    case.image().data(
        _coco(segmentation={"size": [H, W], "counts": "0`h9"}, bbox=[0, 0, 10, 5], area=50)
    )  # 100x100 px of runs
    case.reported(
        cli("check", case.json), case.json, "annotation id 7 (image id 1)", "RLE counts run past the end of the image"
    )
    case.refused(
        cli("show", case.json, "--out", case.out), case.json, "annotation id 7 (image id 1)", "run past the end"
    )

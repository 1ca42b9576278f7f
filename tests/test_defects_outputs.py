"""Outputs never destroy inputs, unwritable outputs are one-line errors, killed runs leave no
temporary folders for ever, and Python warnings reach the terminal as one ``warning:`` line."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instaseg.core import io
from instaseg.core.errors import InstasegError
from instaseg.core.structures import Instances
from tests.conftest import assert_one_line_error

W, H = 32, 24


class FakePredictor:
    """Finds one 'disc' in the middle of any image."""

    class_names = ("disc",)
    max_detections = 100

    def predict(self, image, score_threshold=0.5, classes=None, max_detections=None):
        height, width = image.shape[:2]
        yy, xx = np.mgrid[:height, :width]
        disc = (yy - height // 2) ** 2 + (xx - width // 2) ** 2 <= 36
        return Instances.from_masks(disc[None], [0], [0.9], self.class_names)


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """tmp/ds/{data.json, a.png, results.json, preds/, rev/}, tmp/imgs/{a,b}.png, tmp/link -> imgs, tmp/m.pt."""
    # Modules the verbs import lazily bind ``load`` when first imported: import them before patching,
    # so that they keep the real one once this test is over.
    import instaseg.cli.quickstart  # noqa: F401

    monkeypatch.setattr("instaseg.engine.predictor.load", lambda path: FakePredictor())
    ds, imgs = tmp_path / "ds", tmp_path / "imgs"
    ds.mkdir()
    imgs.mkdir()
    for folder in (ds, imgs):
        Image.new("RGB", (W, H), (40, 80, 120)).save(folder / "a.png")
    Image.new("RGB", (W, H), (90, 20, 20)).save(imgs / "b.png")
    square = [4, 4, 14, 4, 14, 14, 4, 14]
    io.write_json(
        ds / "data.json",
        {
            "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
            "categories": [{"id": 1, "name": "disc"}],
            "annotations": [
                {
                    "id": 1,
                    "image_id": 1,
                    "category_id": 1,
                    "segmentation": [square],
                    "bbox": [4, 4, 10, 10],
                    "area": 100,
                    "iscrowd": 0,
                }
            ],
        },
    )
    io.write_json(ds / "results.json", [{"image_id": 1, "category_id": 1, "bbox": [4, 4, 10, 10], "score": 0.9}])
    (ds / "preds").mkdir()
    (ds / "rev").mkdir()
    (tmp_path / "link").symlink_to(imgs, target_is_directory=True)
    (tmp_path / "m.pt").write_bytes(b"checkpoint")
    return tmp_path


def snapshot(root: Path) -> list[tuple[str, bytes]]:
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else b"") for p in root.rglob("*"))


def refused_alone(result, out, what: str) -> None:
    """One ``error: OUT: WHAT`` line, exit 2."""
    assert_one_line_error(result)
    assert result.stderr.startswith(f"error: {out}: {what}"), result.stderr


# (arguments, output, how the output overlaps, the input it overlaps); {T} stands for the tree.
OVERLAPS = [
    ("predict {T}/m.pt {T}/imgs --out {T}/imgs", "{T}/imgs", "is", "{T}/imgs"),
    ("predict {T}/m.pt {T}/imgs --out {T}/imgs/preds", "{T}/imgs/preds", "lies inside", "{T}/imgs"),
    ("predict {T}/m.pt {T}/imgs --out {T}", "{T}", "contains", "{T}/m.pt"),
    ("predict {T}/m.pt {T}/imgs/*.png --out {T}/imgs", "{T}/imgs", "contains", "{T}/imgs/a.png"),
    ("predict {T}/m.pt {T}/link --out {T}/imgs", "{T}/imgs", "is", "{T}/link"),
    ("export {T}/m.pt --out {T}/m.pt", "{T}/m.pt", "is", "{T}/m.pt"),
    (
        "eval {T}/ds/data.json {T}/ds/results.json --out {T}/ds/results.json",
        "{T}/ds/results.json",
        "is",
        "{T}/ds/results.json",
    ),
    ("eval {T}/ds/data.json {T}/ds/preds --out {T}/ds/preds", "{T}/ds/preds", "is", "{T}/ds/preds"),
    ("check {T}/ds/data.json --fix {T}/ds/data.json", "{T}/ds/data.json", "is", "{T}/ds/data.json"),
    ("stats {T}/ds/data.json --plot {T}/ds/data.json", "{T}/ds/data.json", "is", "{T}/ds/data.json"),
    ("show {T}/ds/data.json --out {T}/ds", "{T}/ds", "contains", "{T}/ds/data.json"),
    ("show {T}/ds/data.json --images {T}/imgs --out {T}/imgs", "{T}/imgs", "is", "{T}/imgs"),
    ("show {T}/ds/data.json --images {T}/imgs --out {T}", "{T}", "contains", "{T}/ds/data.json"),
    ("convert {T}/ds/data.json {T}/ds --to yolo", "{T}/ds", "contains", "{T}/ds/data.json"),
    ("noise {T}/ds/data.json --out {T}/ds/data.json", "{T}/ds/data.json", "is", "{T}/ds/data.json"),
    ("review {T}/ds/data.json --pred {T}/ds/results.json --out {T}/ds", "{T}/ds", "contains", "{T}/ds/data.json"),
    (
        "review apply {T}/ds/rev --data {T}/ds/data.json --accept all --out {T}/ds/data.json",
        "{T}/ds/data.json",
        "is",
        "{T}/ds/data.json",
    ),
    (
        "review apply {T}/ds/rev --accept all --out {T}/ds/rev/fixed.json",
        "{T}/ds/rev/fixed.json",
        "lies inside",
        "{T}/ds/rev",
    ),
    ("train {T}/ds/data.json --epochs 1 --out {T}/ds", "{T}/ds", "contains", "{T}/ds/data.json"),
]


@pytest.mark.parametrize(
    "args, out, relation, source", OVERLAPS, ids=[case[0].split(" --")[0] + f" ({case[2]})" for case in OVERLAPS]
)
def test_an_output_overlapping_an_input_is_refused_before_anything_is_touched(cli, tree, args, out, relation, source):
    before = snapshot(tree)
    fill = lambda text: text.replace("{T}", str(tree))  # noqa: E731
    result = cli(*fill(args).split(), "--overwrite")
    refused_alone(result, fill(out), f"output {relation} the input {fill(source)}; choose another --out")
    assert snapshot(tree) == before


def test_predict_into_its_own_image_folder_keeps_the_images(cli, tree):
    """The reported case: ``predict m.pt imgs --out imgs --overwrite`` used to delete the images."""
    result = cli("predict", tree / "m.pt", tree / "imgs", "--out", tree / "imgs", "--overwrite")
    assert result.code == 2
    assert sorted(p.name for p in (tree / "imgs").iterdir()) == ["a.png", "b.png"]
    assert cli("predict", tree / "m.pt", tree / "imgs", "--out", tree / "preds").code == 0


def test_outputs_beside_a_datasets_images_are_allowed(cli, tree):
    """A dataset reads only the images it names, so its folder may hold outputs (``--out ds/overlays``)."""
    assert cli("show", tree / "ds" / "data.json", "--out", tree / "ds" / "overlays").code == 0
    again = cli("show", tree / "ds" / "data.json", "--out", tree / "ds" / "overlays", "--overwrite")
    assert again.code == 0 and (tree / "ds" / "overlays" / "a.png").is_file()
    assert cli("stats", tree / "ds" / "data.json", "--plot", tree / "ds" / "stats.png").code == 0


@pytest.mark.parametrize(
    "args",
    [
        "show {T}/ds/data.json --out .",
        "predict {T}/m.pt {T}/imgs --out .",
        "synth .",
        "synth ..",
        "quickstart --out .",
    ],
)
def test_the_current_folder_is_never_an_output(cli, tree, monkeypatch, args):
    here = tree / "elsewhere"
    here.mkdir()
    (here / "notes.txt").write_text("keep")
    monkeypatch.chdir(here)
    before = snapshot(tree)
    result = cli(*args.format(T=tree).split(), "--overwrite")
    out = args.split()[-1]
    relation = "is" if out == "." else "contains"
    refused_alone(result, out, f"output {relation} the current folder; choose another --out")
    assert snapshot(tree) == before


def test_show_into_the_current_dataset_folder_is_refused(cli, tree, monkeypatch):
    monkeypatch.chdir(tree / "ds")
    before = snapshot(tree)
    refused_alone(
        cli("show", "data.json", "--out", ".", "--overwrite"),
        ".",
        "output contains the input data.json; choose another --out",
    )
    assert snapshot(tree) == before


UNDER_A_FILE = [
    "show {T}/ds/data.json --out {O}",
    "check {T}/ds/data.json --fix {O}",
    "stats {T}/ds/data.json --plot {O}",
    "convert {T}/ds/data.json {O} --to yolo",
    "noise {T}/ds/data.json --out {O}",
    "eval {T}/ds/data.json {T}/ds/results.json --out {O}",
    "review {T}/ds/data.json --pred {T}/ds/results.json --out {O}",
    "review apply {T}/ds/rev --accept all --out {O}",
    "predict {T}/m.pt {T}/imgs --out {O}",
    "export {T}/m.pt --out {O}",
    "train {T}/ds/data.json --epochs 1 --out {O}",
    "synth {O}",
    "quickstart --out {O}",
]


@pytest.mark.parametrize("args", UNDER_A_FILE, ids=[a.split(" {T}/")[0].split(" {O}")[0] for a in UNDER_A_FILE])
def test_an_output_that_cannot_be_written_is_a_located_error_in_every_verb(cli, tree, args):
    blocker = tree / "blocker.txt"
    blocker.write_text("a file, not a folder")
    out = blocker / "out"
    before = snapshot(tree)
    result = cli(*args.format(T=tree, O=out).split())
    refused_alone(result, out, "cannot write (Not a directory)")
    assert snapshot(tree) == before


def test_a_read_only_output_folder_is_refused_before_any_work(cli, tree, monkeypatch):
    """Root writes through chmod 0o555, so the folder is made read-only where instaseg asks the system."""
    read_only = tree / "ro"
    read_only.mkdir()
    real_access, real_statvfs = os.access, os.statvfs
    monkeypatch.setattr(
        os, "access", lambda path, mode, **kw: Path(path) != read_only and real_access(path, mode, **kw)
    )
    missing_gt = tree / "missing.json"  # the output is judged before any input is read
    result = cli("eval", missing_gt, tree / "ds" / "results.json", "--out", read_only / "report")
    refused_alone(result, read_only / "report", "cannot write (Permission denied)")

    class ReadOnlyMount:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnlyMount() if Path(path) == read_only else real_statvfs(path))
    result = cli("show", tree / "ds" / "data.json", "--out", read_only / "pictures")
    refused_alone(result, read_only / "pictures", "cannot write (Read-only file system)")


def test_a_write_refused_by_the_file_system_is_a_located_error(cli, tree, monkeypatch):
    def read_only_mkdtemp(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))

    monkeypatch.setattr(io.tempfile, "mkdtemp", read_only_mkdtemp)
    out = tree / "pictures"
    refused_alone(cli("show", tree / "ds" / "data.json", "--out", out), out, "cannot write (Read-only file system)")
    assert not out.exists()


def test_a_full_disk_while_writing_names_the_output_and_keeps_the_earlier_one(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("earlier")
    with pytest.raises(InstasegError, match=f"^{re.escape(str(target))}: cannot write \\(No space left on device\\)$"):
        with io.atomic_path(target, overwrite=True) as tmp:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    assert target.read_text() == "earlier" and os.listdir(tmp_path) == ["report.json"]

    with pytest.raises(FileNotFoundError):  # reading an input inside the block fails on its own terms
        with io.atomic_path(target, overwrite=True):
            (tmp_path / "missing-input.png").read_bytes()


def test_an_earlier_output_folder_survives_a_failed_rename(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("earlier run")
    real_replace = os.replace

    def refuse_the_new_folder(src, dst):
        if Path(dst) == out and Path(src).name == "run":
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", refuse_the_new_folder)
    with pytest.raises(InstasegError, match="cannot write"):
        with io.atomic_path(out, overwrite=True) as tmp:
            tmp.mkdir()
            (tmp / "new.txt").write_text("new run")
    assert (out / "old.txt").read_text() == "earlier run"


KILLED_WRITE = """
import os, sys
from instaseg.core import io
writing = io.atomic_path(sys.argv[1])
writing.__enter__().write_text("half")
os._exit(9)  # as if killed: no clean-up runs
"""


def test_a_killed_commands_temporary_folder_goes_on_the_next_write(tmp_path):
    out = tmp_path / "out.json"
    subprocess.run([sys.executable, "-c", KILLED_WRITE, str(out)], check=False)
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".out.json."), leftovers

    live = tmp_path / f".out.json.{os.getpid()}.abcdefgh.tmp"  # a write of this process, still going
    other = tmp_path / f".other.json.{leftovers[0].split('.')[3]}.abcdefgh.tmp"  # another output's
    for folder in (live, other):
        folder.mkdir()
    io.write_text(out, "whole")
    assert out.read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, live.name, other.name])


def test_python_warnings_are_one_line_without_source_paths(cli, tree, monkeypatch):
    def empty_mean():
        return np.mean(np.array([]))  # numpy warns from inside its own source

    with warnings.catch_warnings(record=True) as from_numpy:
        warnings.simplefilter("always")
        empty_mean()
    assert from_numpy

    def warns(*args, **kwargs):
        empty_mean()
        warnings.warn("first line\n  second line", UserWarning, stacklevel=1)
        raise InstasegError("stop here", file="data.json")

    monkeypatch.setattr("instaseg.cli.check.open_dataset", warns)
    shown = warnings.showwarning
    result = cli("check", tree / "ds" / "data.json")
    assert result.stderr.splitlines() == [
        *(f"warning: {w.message}" for w in from_numpy),
        "warning: first line second line",
        "error: data.json: stop here",
    ]
    assert warnings.showwarning is shown


@pytest.mark.parametrize(
    "verb",
    [
        ["convert", "{json}", "{imgs}", "--to", "yolo"],
        ["check", "{json}", "--fix", "{imgs}"],
        ["eval", "{json}", "{json}", "--out", "{imgs}"],
        ["noise", "{json}", "--out", "{imgs}"],
        ["review", "{json}", "--pred", "{json}", "--out", "{imgs}"],
    ],
    ids=lambda verb: verb[0],
)
def test_an_image_folder_kept_elsewhere_is_never_an_output(tmp_path, cli, verb):
    # The images lie beside the dataset's folder, named by info.image_root, as `instaseg convert` writes it.
    imgs, data = tmp_path / "imgs", tmp_path / "data"
    imgs.mkdir()
    data.mkdir()
    Image.new("RGB", (W, H), (40, 80, 120)).save(imgs / "a.png")
    square = [4, 4, 14, 4, 14, 14, 4, 14]
    io.write_json(
        data / "t.json",
        {
            "info": {"image_root": "../imgs"},
            "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
            "categories": [{"id": 1, "name": "disc"}],
            "annotations": [
                {
                    "id": 1,
                    "image_id": 1,
                    "category_id": 1,
                    "segmentation": [square],
                    "bbox": [4, 4, 10, 10],
                    "area": 100,
                    "iscrowd": 0,
                    "score": 0.9,
                }
            ],
        },
    )
    args = [a.format(json=data / "t.json", imgs=imgs) for a in verb]
    result = cli(*args, "--overwrite")
    assert_one_line_error(result, imgs, "the input")
    assert sorted(p.name for p in imgs.iterdir()) == ["a.png"]

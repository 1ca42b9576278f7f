"""One way to open a dataset (``open_dataset`` + ``ReadOptions``), one save path owning
``info.image_root`` (``Dataset.save``), and ``Dataset`` edits that keep its indexes current."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image

import instaseg
from instaseg.core import events, io
from instaseg.core.errors import InstasegError
from instaseg.data import Dataset
from instaseg.data.convert import ReadOptions, Report, convert, open_dataset

W, H = 40, 30
SQUARE = [[2.0, 2.0, 20.0, 2.0, 20.0, 20.0, 2.0, 20.0]]


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H), (40, 80, 120)).save(path)
    return path


def _coco(annotations: int = 2, images: int = 2) -> dict:
    return {
        "images": [{"id": k + 1, "file_name": f"{k}.png", "width": W, "height": H} for k in range(images)],
        "annotations": [
            {
                "id": k + 1,
                "image_id": k % images + 1,
                "category_id": 1,
                "segmentation": copy.deepcopy(SQUARE),
                "area": 324.0,
                "bbox": [2.0, 2.0, 18.0, 18.0],
                "iscrowd": 0,
            }
            for k in range(annotations)
        ],
        "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "debris"}],
    }


def _coco_file(folder: Path, coco: dict | None = None, name: str = "gt.json") -> Path:
    coco = coco if coco is not None else _coco()
    for image in coco["images"]:
        _image(folder / image["file_name"])
    path = folder / name
    path.write_text(json.dumps(coco))
    return path


def _via_folder(folder: Path, regions_per_image: int = 1) -> Path:
    entries = {}
    for stem in ("p", "q"):
        _image(folder / f"{stem}.jpg")
        polygon = {"name": "polygon", "all_points_x": [2, 30, 30, 2], "all_points_y": [2, 2, 25, 25]}
        regions = [{"shape_attributes": polygon, "region_attributes": {}}] * regions_per_image
        entries[f"{stem}.jpg"] = {"filename": f"{stem}.jpg", "size": 1, "regions": regions, "file_attributes": {}}
    (folder / "via_region_data.json").write_text(json.dumps(entries))
    return folder


def _indexes(dataset: Dataset) -> tuple:
    """The lookup indexes, as plain values, to compare with those of a freshly built dataset."""
    by_image = {k: [a["id"] for a in v] for k, v in dataset.annotations_by_image.items() if v}
    return dict(dataset.image_by_id), by_image, dict(dataset.category_index), dataset.class_names


def _fresh(dataset: Dataset) -> Dataset:
    return Dataset(copy.deepcopy(dataset.coco), dataset.image_root, dataset.source)


# -- ReadOptions ------------------------------------------------------------------------------------
def test_read_options_are_frozen_and_normalise_their_values():
    options = ReadOptions(images="imgs", classes="names.txt", ignore_value=" None ")
    assert options.images == Path("imgs") and options.classes == Path("names.txt") and options.ignore_value is None
    assert ReadOptions(ignore_value="255").ignore_value == 255
    assert ReadOptions(ignore_value="AUTO").ignore_value == "auto" == ReadOptions().ignore_value
    assert ReadOptions(ignore_value=7).ignore_value == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.class_name = "cell"  # type: ignore[misc]


@pytest.mark.parametrize("value", ["abc", "-3", -3, True, 2.5])
def test_read_options_refuse_an_ignore_value_that_is_no_number_none_or_auto(value):
    with pytest.raises(InstasegError, match="--ignore-value takes a number, none or auto"):
        ReadOptions(ignore_value=value)


def test_open_dataset_refuses_options_another_format_reads(tmp_path):
    coco_file = _coco_file(tmp_path / "coco")
    with pytest.raises(InstasegError, match="--mask-suffix and --ignore-value are for masks input, not coco"):
        open_dataset(coco_file, options=ReadOptions(mask_suffix="_m"))
    with pytest.raises(InstasegError, match="--polylines-as-polygons is for via input, not coco"):
        open_dataset(coco_file, options=ReadOptions(polylines_as_polygons=True))
    assert len(open_dataset(_via_folder(tmp_path / "via"), options=ReadOptions(polylines_as_polygons=True))) == 2


# -- open_dataset -----------------------------------------------------------------------------------
def test_open_dataset_is_exported_from_the_package_and_from_data():
    assert instaseg.open_dataset is open_dataset and instaseg.data.open_dataset is open_dataset
    assert instaseg.ReadOptions is ReadOptions and instaseg.data.ReadOptions is ReadOptions


def test_a_coco_file_opens_as_it_is_validated_unless_told_not_to(tmp_path):
    coco = _coco()
    coco["annotations"].append({"id": 9, "image_id": 77, "category_id": 1, "segmentation": SQUARE})  # unknown image
    path = _coco_file(tmp_path, coco)
    opened = open_dataset(path)
    assert opened.coco == Dataset.load(path).coco == json.loads(path.read_text())  # nothing dropped or added
    assert opened.source == path and opened.image_root == tmp_path
    coco["annotations"][1]["id"] = 1  # a duplicate id: refused by validation, kept for `check`
    path.write_text(json.dumps(coco))
    with pytest.raises(InstasegError, match="id 1 is also used"):
        open_dataset(path)
    assert [a["id"] for a in open_dataset(path, validate=False).annotations] == [1, 1, 9]


def test_images_option_is_the_coco_image_folder(tmp_path):
    path = _coco_file(tmp_path / "a")
    assert open_dataset(path, options=ReadOptions(images=tmp_path / "elsewhere")).image_root == tmp_path / "elsewhere"


def test_outputs_that_are_or_hold_the_image_folder_are_refused(tmp_path):
    path = _coco_file(tmp_path / "data")
    for output in (tmp_path / "data", tmp_path):
        with pytest.raises(InstasegError, match="choose another"):
            open_dataset(path, outputs=[output])
    with pytest.raises(InstasegError, match="choose another"):
        open_dataset(_via_folder(tmp_path / "via"), outputs=[tmp_path / "via"])
    assert len(open_dataset(path, outputs=[tmp_path / "data" / "runs", None])) == 2


def test_other_formats_open_converted_as_convert_reads_them(tmp_path):
    via = _via_folder(tmp_path / "via")
    report = Report()
    opened = open_dataset(via, options=ReadOptions(class_name="balloon"), report=report)
    assert report.source_format == "via" and report.detected and report.instances_read == 2
    assert opened.class_names == ["balloon"] and opened.image_root == via
    convert(via, tmp_path / "via.json", options=ReadOptions(class_name="balloon"))
    written = json.loads((tmp_path / "via.json").read_text())
    assert {k: v for k, v in written.items() if k != "info"} == opened.coco


def test_a_read_keeping_under_half_is_refused_without_a_warning_first(tmp_path):
    folder = _via_folder(tmp_path / "via")
    entries = json.loads((folder / "via_region_data.json").read_text())
    point = {"shape_attributes": {"name": "point", "cx": 3, "cy": 3}, "region_attributes": {}}
    entries["p.jpg"]["regions"] += [point] * 3
    (folder / "via_region_data.json").write_text(json.dumps(entries))
    heard: list[events.Event] = []
    with events.listen(heard.append), pytest.raises(InstasegError, match="kept 2 of 5 label records"):
        open_dataset(folder)
    assert not [e for e in heard if isinstance(e, events.Message)]
    with events.listen(heard.append):
        opened = open_dataset(folder, options=ReadOptions(allow_skipped=True))
    warnings = [e.text for e in heard if isinstance(e, events.Message) and e.level == "warning"]
    assert len(opened.annotations) == 2 and len(warnings) == 3 and all("region" in w for w in warnings)


# -- events -----------------------------------------------------------------------------------------
def test_conversion_reports_progress_per_image_read_and_written(tmp_path):
    via = _via_folder(tmp_path / "via")
    heard: list[events.Event] = []
    with events.listen(heard.append):
        convert(via, tmp_path / "out", out_format="yolo")
    progress = [e for e in heard if isinstance(e, events.Progress)]
    for task in ("reading VIA", "writing YOLO"):
        steps = [(e.done, e.total, e.finished) for e in progress if e.task == task]
        assert steps == [(0, 2, False), (1, 2, False), (2, 2, False), (2, 2, True)], task


def test_conversion_warnings_reach_listeners_once_each(tmp_path):
    folder = _via_folder(tmp_path / "via")
    (folder / "q.jpg").unlink()  # its regions are kept, with a warning, when the size is known
    heard: list[events.Event] = []
    with events.listen(heard.append):
        report = convert(folder, tmp_path / "out.json")
    warnings = [e.text for e in heard if isinstance(e, events.Message) and e.level == "warning"]
    assert warnings == report.warnings and len(warnings) == 1 and "q.jpg" in warnings[0]


def test_without_listeners_a_conversion_warning_is_a_python_warning(tmp_path):
    folder = _via_folder(tmp_path / "via")
    (folder / "q.jpg").unlink()
    with pytest.warns(UserWarning, match="q.jpg"):
        open_dataset(folder)


# -- Dataset.save and info.image_root ---------------------------------------------------------------
def test_save_records_the_image_root_relative_to_the_file_only_when_elsewhere(tmp_path):
    dataset = Dataset.load(_coco_file(tmp_path / "imgs"))
    before = copy.deepcopy(dataset.coco)
    beside = json.loads(dataset.save(tmp_path / "imgs" / "copy.json", record_image_root=True).read_text())
    assert beside == before  # next to its images: no info added
    away = json.loads(dataset.save(tmp_path / "out" / "deep" / "a.json", record_image_root=True).read_text())
    assert away == {**before, "info": {"image_root": "../../imgs"}}
    assert dataset.coco == before  # saving does not edit the dataset
    back = Dataset.load(tmp_path / "out" / "deep" / "a.json")
    assert back.image_path(1).resolve() == (tmp_path / "imgs" / "0.png").resolve()


def test_save_without_record_image_root_writes_the_coco_dict_as_it_is(tmp_path):
    coco = {**_coco(), "info": {"image_root": "../../stale"}}
    written = Dataset(copy.deepcopy(coco), tmp_path / "imgs").save(tmp_path / "a.json")
    assert json.loads(written.read_text()) == coco


def test_save_keeps_other_info_and_removes_a_stale_image_root(tmp_path):
    coco = {**_coco(), "info": {"description": "x", "image_root": "../../wrong"}}
    dataset = Dataset(coco, tmp_path / "imgs")
    _coco_file(tmp_path / "imgs", _coco())
    beside = json.loads(dataset.save(tmp_path / "imgs" / "b.json", record_image_root=True).read_text())
    assert list(beside) == ["images", "annotations", "categories", "info"] and beside["info"] == {"description": "x"}
    away = json.loads(dataset.save(tmp_path / "c.json", record_image_root=True).read_text())
    assert away["info"] == {"description": "x", "image_root": "imgs"}


def test_save_to_a_stand_in_path_records_the_root_from_the_final_location(tmp_path):
    dataset = Dataset.load(_coco_file(tmp_path / "imgs"))
    (tmp_path / "staging" / "x" / "y").mkdir(parents=True)
    stand_in, final = tmp_path / "staging" / "x" / "y" / "d.json", tmp_path / "final" / "d.json"
    written = dataset.save(stand_in, record_image_root=True, location=final)
    assert json.loads(written.read_text())["info"] == {"image_root": "../imgs"}


def test_save_through_a_symbolic_link_still_finds_the_images(tmp_path):
    dataset = Dataset.load(_coco_file(tmp_path / "real" / "imgs"))
    (tmp_path / "real" / "deep" / "er").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "deep" / "er")
    back = Dataset.load(dataset.save(tmp_path / "link" / "out.json", record_image_root=True))
    assert back.read_image(1).shape == (H, W, 3)  # a lexical relpath (../real/imgs) would miss them


def test_convert_to_coco_writes_through_the_same_save(tmp_path):
    via = _via_folder(tmp_path / "via")
    convert(via, tmp_path / "out" / "a.json")
    opened = open_dataset(via)
    assert (tmp_path / "out" / "a.json").read_bytes() == opened.save(
        tmp_path / "out" / "b.json", record_image_root=True
    ).read_bytes()
    assert json.loads((tmp_path / "out" / "a.json").read_text())["info"] == {"image_root": "../via"}


# -- edits keep the indexes current -----------------------------------------------------------------
def test_adding_annotations_updates_the_built_indexes(tmp_path):
    dataset = Dataset(_coco(annotations=2), tmp_path)
    assert len(dataset.ground_truth(1)) == 1  # builds the indexes
    new = {"id": 10, "image_id": 1, "category_id": 2, "segmentation": copy.deepcopy(SQUARE), "iscrowd": 0}
    dataset.add_annotations([new])
    assert _indexes(dataset) == _indexes(_fresh(dataset))
    assert [a["id"] for a in dataset.annotations_by_image[1]] == [1, 10]
    assert dataset.ground_truth(1).class_names[dataset.ground_truth(1).class_ids[-1]] == "debris"


def test_removing_annotations_and_images_updates_the_indexes(tmp_path):
    dataset = Dataset(_coco(annotations=4, images=2), tmp_path)
    _indexes(dataset)
    dataset.remove_annotations([1])
    assert [a["id"] for a in dataset.annotations_by_image[1]] == [3]
    dataset.remove_images([2])
    assert [img["id"] for img in dataset.images] == [1] and [a["id"] for a in dataset.annotations] == [3]
    assert 2 not in dataset.image_by_id and not dataset.annotations_by_image.get(2)
    assert _indexes(dataset) == _indexes(_fresh(dataset))


def test_replacing_lists_and_adding_images_updates_the_indexes(tmp_path):
    dataset = Dataset(_coco(annotations=2, images=2), tmp_path)
    _indexes(dataset)
    dataset.add_images([{"id": 5, "file_name": "5.png", "width": W, "height": H}])
    assert dataset.image_by_id[5]["file_name"] == "5.png"
    dataset.annotations = [{**dataset.annotations[0], "id": 7, "image_id": 5}]
    assert dict(dataset.annotations_by_image) == {5: dataset.annotations}
    dataset.categories = [{"id": 2, "name": "debris"}]
    assert dataset.category_index == {2: 0} and dataset.class_names == ["debris"]
    dataset.images = dataset.images[:1]
    assert list(dataset.image_by_id) == [1]
    assert _indexes(dataset) == _indexes(_fresh(dataset))


def test_edits_refuse_records_missing_a_required_field(tmp_path):
    dataset = Dataset(_coco(annotations=2), tmp_path, source="gt.json")
    with pytest.raises(InstasegError, match=r"annotations\[2\].*field 'image_id' missing"):
        dataset.add_annotations([{"id": 3, "category_id": 1}])
    with pytest.raises(InstasegError, match=r"images\[0\].*field 'width' has str"):
        dataset.images = [{"id": 1, "file_name": "a.png", "width": "40", "height": 30}]
    assert len(dataset.annotations) == 2 and len(dataset.images) == 2  # nothing changed


def test_the_coco_reader_drops_unusable_records_through_the_edits(tmp_path):
    coco = _coco(annotations=2)
    coco["annotations"].append({"id": 3, "image_id": 1, "category_id": 1})  # no segmentation
    path = _coco_file(tmp_path, coco)
    report = convert(path, tmp_path / "out.json")
    assert report.instances_read == 2 and io.read_json(tmp_path / "out.json")["annotations"] == coco["annotations"][:2]

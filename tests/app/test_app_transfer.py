"""Import and export over the API, on both databases: COCO in -> COCO out lossless, every format read
and written, an import all or nothing, refusals naming the field."""

from __future__ import annotations

import io as bytes_io
import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import delete, func, select

from instaseg.app.db.schema import AnnotatedInstance, History, Image, LabelClass, Provenance
from instaseg.app.transfer import export_project, import_dataset
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.data import Dataset
from instaseg.data.convert import open_dataset, write_dataset
from tests.app.conftest import add_user, login

H, W = 48, 64  # the client fixture's images
COLUMNS = {"id", "image_id", "category_id", "segmentation", "area", "bbox"}


def _disc(cy, cx, r, h=H, w=W):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _uncompressed(mask):
    """COCO uncompressed RLE (column-major runs, starting with 0s)."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], changes])).tolist()}


def _write_image(path: Path, h: int, w: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _rich_coco(root: Path) -> dict:
    """The fixture's three images and a new one; polygons (one of two parts, one crossing itself, two
    overlapping), compressed and uncompressed RLE, crowd, a score, extra fields, an unused category."""
    _write_image(root / "sub" / "extra.png", 40, 50, seed=4)
    return {
        "info": {"description": "rich"},
        "images": [
            {"id": 10, "file_name": "image_000.png", "width": W, "height": H, "license": 3, "coco_url": "http://x/0"},
            {"id": 11, "file_name": "image_001.png", "width": W, "height": H, "date_captured": "2020-01-02"},
            {"id": 12, "file_name": "image_002.png", "width": W, "height": H, "license": 1},
            {"id": 13, "file_name": "sub/extra.png", "width": 50, "height": 40, "flickr_url": "http://f/3"},
        ],
        "categories": [
            {"id": 7, "name": "cell", "supercategory": "bio"},
            {"id": 3, "name": "dot", "supercategory": "mark"},
            {"id": 9, "name": "unused"},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 10,
                "category_id": 7,
                "segmentation": [[5, 5, 30, 5, 30, 30, 5, 30]],
                "iscrowd": 0,
                "attributes": {"occluded": True},
            },
            {
                "id": 2,
                "image_id": 10,
                "category_id": 3,
                "segmentation": [[35, 5, 45, 5, 45, 15, 35, 15], [50, 30, 60, 30, 60, 40, 50, 40]],
                "iscrowd": 0,
            },
            {
                "id": 3,
                "image_id": 11,
                "category_id": 7,
                "segmentation": mask_ops.encode(_disc(20, 20, 12)),
                "iscrowd": 0,
                "score": 0.87,
            },
            {
                "id": 4,
                "image_id": 11,
                "category_id": 3,
                "segmentation": _uncompressed(_disc(10, 50, 6) | _disc(38, 52, 5)),
                "iscrowd": 1,
                "note": "crowd",
            },
            {"id": 5, "image_id": 13, "category_id": 7, "segmentation": [[5, 5, 25, 25, 25, 5, 5, 25]], "iscrowd": 0},
            {
                "id": 6,
                "image_id": 13,
                "category_id": 3,
                "segmentation": [[2, 2, 20, 2, 20, 12, 2, 12], [10, 8, 30, 8, 30, 30, 10, 30]],
                "iscrowd": 0,
            },
        ],
    }


def _save(coco: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco))
    return path


def _import(client, source: str, **body):
    return client.post("/api/import", json={"source": source, **body})


def _counts(db) -> dict[str, int]:
    with db.read() as session:
        return {
            model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
            for model in (LabelClass, Image, AnnotatedInstance, History)
        }


def _by_file(coco: dict) -> dict[str, tuple[dict, list[dict]]]:
    """{file_name: (image record, its annotations in order)}."""
    annotations: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for ann in coco["annotations"]:
        annotations[ann["image_id"]].append(ann)
    return {image["file_name"]: (image, annotations[image["id"]]) for image in coco["images"]}


def _assert_same_dataset(before: dict, after: dict) -> None:
    """Images (file_name, size, extra fields), categories (names, supercategory, order) and instances
    (order, class, mask pixel for pixel, crowd, extra fields) equal; ids may differ."""
    strip = lambda record, keys: {k: v for k, v in record.items() if k not in keys}  # noqa: E731
    assert [strip(c, {"id"}) for c in after["categories"]] == [strip(c, {"id"}) for c in before["categories"]]
    names = [{c["id"]: c["name"] for c in coco["categories"]} for coco in (before, after)]
    images_before, images_after = _by_file(before), _by_file(after)
    assert images_after.keys() == images_before.keys()
    for file_name, (image, anns) in images_before.items():
        image_after, anns_after = images_after[file_name]
        assert strip(image_after, {"id"}) == strip(image, {"id"})
        assert len(anns_after) == len(anns), file_name
        h, w = image["height"], image["width"]
        for ann, back in zip(anns, anns_after, strict=True):
            assert names[1][back["category_id"]] == names[0][ann["category_id"]]
            assert (mask_ops.decode(back["segmentation"], h, w) == mask_ops.decode(ann["segmentation"], h, w)).all()
            assert bool(back.get("iscrowd", 0)) == bool(ann.get("iscrowd", 0))
            assert strip(back, COLUMNS | {"iscrowd"}) == strip(ann, COLUMNS | {"iscrowd"})


def test_coco_in_coco_out_is_lossless(client, tmp_path):
    root = tmp_path / "images"
    coco = _rich_coco(root)
    coco["info"]["image_root"] = ".."  # the file keeps its images elsewhere, as convert writes it
    _save(coco, root / "labels" / "gt.json")
    response = _import(client, "labels/gt.json")
    assert response.status_code == 200, response.text
    assert response.json() == {"images_added": 1, "images_matched": 3, "instances_added": 6, "classes_added": 3}

    response = client.get("/api/export", params={"format": "coco"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    _assert_same_dataset(coco, response.json())

    db = client.app.state.db
    with db.read() as session:
        instances = session.scalars(select(AnnotatedInstance).order_by(AnnotatedInstance.id)).all()
        history = session.scalars(select(History).where(History.entity == "instance")).all()
        classes = session.scalars(select(LabelClass).order_by(LabelClass.position)).all()
        class_history = session.scalars(select(History).where(History.entity == "class")).all()
    # Kept as drawn: a ring, and two rings apart; a ring crossing itself and overlapping rings are masks only.
    assert [i.polygon is not None for i in instances] == [True, True, False, False, False, False]
    assert instances[1].polygon == [[35.0, 5.0, 45.0, 5.0, 45.0, 15.0, 35.0, 15.0], [50, 30, 60, 30, 60, 40, 50, 40]]
    assert [i.provenance for i in instances] == [Provenance.human] * 2 + [Provenance.model] + [Provenance.human] * 3
    assert instances[2].score == pytest.approx(0.87) and instances[3].iscrowd
    assert [(c.name, c.supercategory, c.hotkey) for c in classes] == [
        ("cell", "bio", "1"),
        ("dot", "mark", "2"),
        ("unused", None, "3"),
    ]
    assert len({c.color for c in classes}) == 3
    # One create row per instance, holding the instance as the API shows it; one change set for the import.
    assert sorted(h.entity_id for h in history) == [i.id for i in instances]
    assert len({h.change_set for h in [*history, *class_history]}) == 1 and len(class_history) == 3
    first = next(h for h in history if h.entity_id == instances[0].id)
    assert first.action.value == "create" and first.before is None
    assert first.after["mask"] == instances[0].rle and first.after["polygon"] == instances[0].polygon
    assert first.after["extra"] == {"attributes": {"occluded": True}} and first.after["author_id"] == first.user_id


def test_import_twice_matches_images_and_adds_instances(client, tmp_path):
    root = tmp_path / "images"
    coco = _rich_coco(root)
    _save(coco, root / "gt.json")
    db = client.app.state.db
    assert _import(client, "gt.json").status_code == 200
    with db.read() as session:
        revisions = dict(session.execute(select(Image.file_name, Image.revision)).all())
    # Every matched image changed (instances, or extra fields for the one without instances).
    assert revisions == {"image_000.png": 2, "image_001.png": 2, "image_002.png": 2, "sub/extra.png": 1}
    response = _import(client, str(root / "gt.json"))
    assert response.json() == {"images_added": 0, "images_matched": 4, "instances_added": 6, "classes_added": 0}
    with db.read() as session:
        revisions = dict(session.execute(select(Image.file_name, Image.revision)).all())
    # The image without instances is as the first import left it, so its revision stays.
    assert revisions == {"image_000.png": 3, "image_001.png": 3, "image_002.png": 2, "sub/extra.png": 2}
    assert _counts(db) == {"classes": 3, "images": 4, "instances": 12, "history": 12 + 3}


def test_imported_rows_never_take_the_id_of_a_deleted_one(client, tmp_path):
    root = tmp_path / "images"
    _save(_rich_coco(root), root / "gt.json")
    db = client.app.state.db
    assert _import(client, "gt.json").status_code == 200
    with db.write() as session:
        last = session.scalar(select(func.max(AnnotatedInstance.id)))
        session.execute(delete(AnnotatedInstance).where(AnnotatedInstance.id == last))
        newest_image = session.scalar(select(func.max(Image.id)))
        session.execute(delete(Image).where(Image.id == newest_image))
    assert _import(client, "gt.json").json()["images_added"] == 1
    with db.read() as session:
        new_ids = session.scalars(select(AnnotatedInstance.id).where(AnnotatedInstance.id >= last)).all()
        assert len(new_ids) == 6 and min(new_ids) > last
        assert session.scalar(select(func.max(Image.id))) > newest_image


def _failing(db, coco: dict, root: Path, culprit: str) -> None:
    before = _counts(db)
    with pytest.raises(InstasegError, match=culprit):
        import_dataset(db, Dataset(coco, root), user_id=None)
    assert _counts(db) == before


def test_an_import_failing_halfway_writes_nothing(client, tmp_path):
    root = tmp_path / "images"
    db = client.app.state.db
    coco = _rich_coco(root)
    # The classes are created in the transaction before the third image turns out to be of another size.
    coco["images"][2]["width"] = 65
    path = _save(coco, root / "gt.json")
    response = _import(client, "gt.json")
    assert response.status_code == 422 and response.json()["field"] == "source", response.text
    assert "image id 12" in response.json()["detail"] and "64x48" in response.json()["detail"]
    assert _counts(db) == {"classes": 0, "images": 3, "instances": 0, "history": 0}

    # The second image lies outside the root, through a linked folder.
    outside = tmp_path / "outside"
    _write_image(outside / "b.png", H, W)
    (root / "linked").symlink_to(outside, target_is_directory=True)
    coco = _rich_coco(root)
    coco["images"][1]["file_name"] = "linked/b.png"
    _failing(db, coco, root, "image id 11.*outside")
    # A dataset whose whole folder lies outside the root.
    _failing(db, _rich_coco(root), outside, "image id 10.*outside")

    coco = _rich_coco(root)
    coco["annotations"][-1]["category_id"] = 99
    _failing(db, coco, root, "annotation id 6.*category id 99")
    coco = _rich_coco(root)
    coco["annotations"][-1]["segmentation"] = []
    _failing(db, coco, root, "annotation id 6.*no polygon or RLE")
    coco = _rich_coco(root)
    coco["images"].append({**coco["images"][0], "id": 14})
    _failing(db, coco, root, "image id 14.*same file as image id 10")
    coco = _rich_coco(root)
    coco["annotations"][2]["segmentation"] = {"size": [H, W + 1], "counts": "0"}
    _failing(db, coco, root, "annotation id 3")  # validated even when passed in directly
    assert path.exists() and _counts(db) == {"classes": 0, "images": 3, "instances": 0, "history": 0}


def test_refusals_name_the_field_and_write_nothing(client, tmp_path):
    root = tmp_path / "images"
    _save(_rich_coco(root), root / "gt.json")
    _save(_rich_coco(root), tmp_path / "elsewhere.json")
    db = client.app.state.db
    for body, field in (
        ({"source": str(tmp_path / "elsewhere.json")}, "source"),
        ({"source": "../elsewhere.json"}, "source"),
        ({"source": "missing.json"}, "source"),
        ({"source": "gt.json", "format": "pdf"}, "format"),
        ({"source": "gt.json", "options": {"ignore_value": "often"}}, "options.ignore_value"),
        ({"source": "gt.json", "options": {"colour": "red"}}, "options.colour"),
        ({"source": "gt.json", "options": {"classes": "../../names.txt"}}, "options.classes"),
        ({"source": "gt.json", "options": {"mask_suffix": "_m"}}, "source"),  # an option of another format
        ({}, "source"),
    ):
        response = client.post("/api/import", json=body)
        assert response.status_code == 422 and response.json()["field"] == field, (body, response.text)
    assert _counts(db) == {"classes": 0, "images": 3, "instances": 0, "history": 0}
    for params, field in (({"format": "pdf"}, "format"), ({"format": "coco", "image_ids": [1, 99]}, "image_ids")):
        response = client.get("/api/export", params=params)
        assert response.status_code == 422 and response.json()["field"] == field, response.text
    with pytest.raises(InstasegError, match="lies inside"):
        export_project(db, root / "out.json", "coco")
    (tmp_path / "taken.json").write_text("keep")
    with pytest.raises(InstasegError, match="already exists"):
        export_project(db, tmp_path / "taken.json", "coco")
    assert (tmp_path / "taken.json").read_text() == "keep" and not (root / "out.json").exists()


def test_import_and_export_need_the_manage_permission(secured_client, tmp_path):
    _save(_rich_coco(tmp_path / "images"), tmp_path / "images" / "gt.json")
    db = secured_client.app.state.db
    add_user(db, "ann", "annotator")
    add_user(db, "boss", "admin")
    headers = login(secured_client, "ann")
    assert secured_client.post("/api/import", json={"source": "gt.json"}, headers=headers).status_code == 403
    assert secured_client.get("/api/export", headers=headers).status_code == 403
    assert secured_client.post("/api/import", json={"source": "gt.json"}).status_code == 401
    headers = login(secured_client, "boss")
    response = secured_client.post("/api/import", json={"source": "gt.json"}, headers=headers)
    assert response.status_code == 200 and response.json()["instances_added"] == 6
    with db.read() as session:
        boss = session.scalar(select(func.min(AnnotatedInstance.author_id)))
        assert {h.user_id for h in session.scalars(select(History))} == {boss}


def _small_coco(folder: Path) -> dict:
    """Two 40x50 images, three instances apart from each other (so single-layer formats keep them all)."""
    for k in range(2):
        _write_image(folder / f"s{k}.png", 40, 50, seed=k)
    disc = lambda cy, cx, r: mask_ops.encode(_disc(cy, cx, r, 40, 50))  # noqa: E731
    return {
        "images": [{"id": k + 1, "file_name": f"s{k}.png", "width": 50, "height": 40} for k in range(2)],
        "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "dot"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": disc(12, 12, 8), "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "segmentation": disc(28, 36, 6), "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "segmentation": disc(20, 25, 10), "iscrowd": 0},
        ],
    }


READ_OPTIONS = {"mask-files": {"class_name": "cell"}}


def test_every_readable_format_imports_with_its_counts(client, tmp_path):
    root = tmp_path / "images"
    coco = _small_coco(root / "base")
    _save(coco, root / "base" / "gt.json")
    sources = {"coco": "base/gt.json"}
    # Not right inside the root: the YOLO reader takes a folder inside one named "images" for a split.
    for fmt in ("yolo", "via", "labelme", "masks", "mask-files"):
        write_dataset(Dataset(coco, root / "base"), root / "formats" / fmt, fmt)
        sources[fmt] = f"formats/{fmt}"
    db = client.app.state.db
    for fmt, source in sources.items():
        body = {"source": source, "format": fmt, "options": READ_OPTIONS.get(fmt, {})}
        response = client.post("/api/import", json=body)
        assert response.status_code == 200, (fmt, response.text)
        summary = response.json()
        assert (summary["images_added"], summary["images_matched"], summary["instances_added"]) == (2, 0, 3), fmt
        with db.read() as session:
            names = session.scalars(select(Image.file_name).where(Image.file_name.like(f"{source}/%"))).all()
        assert len(names) == 2 or fmt == "coco", (fmt, names)
    with db.read() as session:
        classes = session.scalars(select(LabelClass.name).order_by(LabelClass.position)).all()
    assert classes == ["cell", "dot"] and _counts(db)["instances"] == 3 * len(sources)
    # Detected when not named.
    write_dataset(Dataset(coco, root / "base"), root / "formats" / "again", "yolo")
    assert _import(client, "formats/again").json()["instances_added"] == 3


def test_every_writable_format_exports(client, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    root = tmp_path / "images"
    _save(_small_coco(root / "base"), root / "base" / "gt.json")
    assert _import(client, "base/gt.json").status_code == 200
    for fmt in ("coco", "yolo", "via", "labelme", "masks", "mask-files", "semantic", "panoptic"):
        response = client.get("/api/export", params={"format": fmt})
        assert response.status_code == 200, (fmt, response.text)
        if fmt == "coco":
            assert len(response.json()["annotations"]) == 3
            continue
        assert response.headers["content-type"] == "application/zip"
        folder = tmp_path / "out" / fmt
        zipfile.ZipFile(bytes_io.BytesIO(response.content)).extractall(folder)
        if fmt == "semantic":
            assert len(list((folder / "masks").glob("*.png"))) == 5 and (folder / "legend.json").exists()
        elif fmt == "panoptic":
            segments = json.loads((folder / "panoptic.json").read_text())["annotations"]
            assert sum(len(image["segments_info"]) for image in segments) == 3
        else:
            back = open_dataset(folder, fmt)
            assert (len(back.images), len(back.annotations)) == (5, 3), fmt
    response = client.get("/api/export", params={"format": "coco", "image_ids": [4]})
    assert [image["file_name"] for image in response.json()["images"]] == ["base/s0.png"]
    assert len(response.json()["annotations"]) == 2
    assert not list(scratch.iterdir())  # each export's temporary folder went with its response

"""Semantic label maps (output only): ``OUT/masks/<stem>.png`` with 0 = background, k = k-th category.

Overlaps follow the rule of every single-layer output: the largest instance is painted first, so a
smaller overlapping instance stays on top. The PNGs are palette images (the pixel values are class
indices, the palette only colours the preview) for up to 255 classes, 16-bit grey above.
``OUT/legend.json`` lists index, name and colour; ``OUT/legend.png`` shows the colours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from instaseg.core import events, io
from instaseg.data.dataset import Dataset
from instaseg.data.formats._common import FAST_PNG, Report, output_names
from instaseg.data.formats.masks import paint


def palette(count: int) -> np.ndarray:
    """(count, 3) uint8 colours: the PASCAL VOC colour map (index 0 black), distinct for 256 entries."""
    colours = np.zeros((count, 3), np.uint8)
    for index in range(count):
        value, shift = index, 7
        while value:
            for channel in range(3):
                colours[index, channel] |= ((value >> channel) & 1) << shift
            value >>= 3
            shift -= 1
    return colours


def write(dataset: Dataset, out: Path, *, report: Report, overwrite: bool = False, **_) -> Path:
    """Write one class-index PNG per image, ``legend.json`` and ``legend.png``."""
    names = output_names(dataset)
    class_names = ["background", *dataset.class_names]
    colours = palette(len(class_names))
    with io.atomic_path(out, overwrite) as tmp:
        (tmp / "masks").mkdir(parents=True)
        for image in events.track(dataset.images, "writing semantic maps", unit="image"):
            labels, visible = paint(dataset, image, report)
            # instance id -> class index (category position + 1), 0 stays background
            lookup = np.zeros(labels.max(initial=0) + 1, np.int64)
            for ann, instance_id in visible:
                lookup[instance_id] = dataset.category_index[ann["category_id"]] + 1
            classes = lookup[labels]
            report.instances_written += len(visible)
            picture = _label_picture(classes, colours)
            picture.save(tmp / "masks" / f"{Path(names[image['id']]).stem}.png", compress_level=FAST_PNG)
        legend = [{"index": k, "name": n, "color": colours[k].tolist()} for k, n in enumerate(class_names)]
        io.write_json(tmp / "legend.json", legend, indent=True)
        io.write_image(tmp / "legend.png", _legend_picture(class_names, colours))
    return out


def _label_picture(classes: np.ndarray, colours: np.ndarray) -> Image.Image:
    if len(colours) > 256:
        return Image.fromarray(classes.astype(np.uint16))
    picture = Image.fromarray(classes.astype(np.uint8), mode="P")
    picture.putpalette(colours.reshape(-1).tolist())
    return picture


def _legend_picture(class_names: list[str], colours: np.ndarray) -> np.ndarray:
    row = 20
    picture = Image.new("RGB", (260, row * len(class_names) + 4), "white")
    draw = ImageDraw.Draw(picture)
    for k, name in enumerate(class_names):
        top = 2 + k * row
        draw.rectangle([4, top, 4 + row - 4, top + row - 4], fill=tuple(int(c) for c in colours[k]), outline="grey")
        draw.text((row + 8, top + 3), f"{k}: {name}", fill="black")
    return np.asarray(picture)

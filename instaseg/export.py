"""Export a trained model to ONNX (for onnxruntime and other runtimes) or TorchScript.

Both files hold the same traced graph, for one fixed input size: S x S pixels, where S is the
model's inference short side (``input_sizes.short_side``: for Mask R-CNN its ``min_size``, 512
for the "cpu" preset, 128 for "small").
Resize or pad an image to S x S before feeding it; the outputs are in those S x S pixels.

Inputs and outputs (N is the number of detections, K the number of classes):

===============  =====================  ==============================================================
name             shape, type            meaning
===============  =====================  ==============================================================
``image``        (S, S, 3) uint8        RGB pixels
``boxes``        (N, 4) float32         [x1, y1, x2, y2] in input pixels
``class_ids``    (N,) int64             index into the model's class names (0-based)
``scores``       (N,) float32           confidence in [0, 1]; sorted high to low
``masks``        (N, S, S) float32      mask probability per pixel; threshold at 0.5
``class_probs``  (N, K) float32         softmax over the K classes of each detection
===============  =====================  ==============================================================

The graph keeps every detection above the model's own score floor (0.05 for Mask R-CNN), like
``Predictor.predict(image, score_threshold=0.05)``; apply your own threshold to ``scores``.
The class names are stored in the ONNX metadata (``class_names``, a JSON list) and in the
TorchScript file's extra files (``class_names.txt``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from instaseg.core import io
from instaseg.core.errors import InstasegError
from instaseg.models.base import InstanceSegmenter

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript"}
INPUT_NAMES = ["image"]
OUTPUT_NAMES = ["boxes", "class_ids", "scores", "masks", "class_probs"]
ONNX_OPSET = 17


def input_size(model: InstanceSegmenter) -> int:
    """The side S of the square image the exported graph takes: the model's inference short side."""
    return model.input_sizes.short_side


def export_model(
    predictor,
    format: str = "onnx",
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    source: str | Path | None = None,
) -> Path:
    """Export a loaded model (``instaseg.load(path)``) to ONNX or TorchScript.

    Args:
        predictor: the loaded model; it is exported on the CPU.
        format: "onnx" or "torchscript".
        out: the file to write; by default ``source`` with the suffix ``.onnx`` / ``.torchscript``.
        overwrite: replace ``out`` if it exists.
        source: the checkpoint the predictor came from (names the default output).

    Returns:
        The written file. Its inputs and outputs are described in this module's docstring.
    """
    if format not in FORMATS:
        raise InstasegError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    if out is None:
        if source is None:
            raise InstasegError("give the output file (--out)")
        out = Path(source).with_suffix(FORMATS[format])
    io.check_output(out, overwrite)
    size = input_size(predictor.model)
    module = predictor.model.to("cpu").eval().export_module(size)
    example = torch.zeros((size, size, 3), dtype=torch.uint8)
    class_names = list(predictor.class_names)
    with io.atomic_path(out, overwrite) as tmp, torch.no_grad(), warnings.catch_warnings():
        # Tracing warns about every Python-level branch torchvision freezes at the fixed input size;
        # that is the documented behaviour of a fixed-size export, not a problem to report.
        warnings.simplefilter("ignore")
        if format == "onnx":
            _export_onnx(module, example, tmp, class_names)
        else:
            traced = torch.jit.trace(module, example, check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={"class_names.txt": "\n".join(class_names)})
    return Path(out)


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path, class_names: list[str]) -> None:
    detections = {0: "detections"}
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=INPUT_NAMES,
        output_names=OUTPUT_NAMES,
        dynamic_axes={name: detections for name in OUTPUT_NAMES},
        opset_version=ONNX_OPSET,
        # The TorchScript-based exporter handles torchvision's detection ops (RoIAlign, NMS and the
        # data-dependent number of detections); the dynamo exporter does not yet for Mask R-CNN.
        dynamo=False,
    )
    graph = onnx.load(str(path))
    graph.metadata_props.add(key="class_names", value=json.dumps(class_names))
    graph.metadata_props.add(key="input_size", value=str(example.shape[0]))
    onnx.save(graph, str(path))

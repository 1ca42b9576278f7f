"""instaseg: instance segmentation, offline: data, models, the COCO metric and label review.

The Python API mirrors the CLI::

    import instaseg
    ds = instaseg.open_dataset("train.json")   # COCO, or any format ``instaseg convert`` reads
    model = instaseg.load("runs/best.pt")
    result = model.predict("image.jpg")   # -> instaseg.Instances
"""

import os

# OpenMP threads that spin while waiting make PyTorch several times slower whenever other
# processes share the CPU; passive waiting costs little when they do not. libgomp
# reads this when torch is first imported, so it is set before anything imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from instaseg.core.errors import InstasegError  # noqa: E402
from instaseg.core.structures import Instances  # noqa: E402
from instaseg.data import Dataset  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Dataset",
    "Instances",
    "InstasegError",
    "ReadOptions",
    "__version__",
    "get_model",
    "list_models",
    "load",
    "open_dataset",
]


def __getattr__(name: str):
    # torch and torchvision take seconds to import; only pay for them when a model is wanted.
    if name == "load":
        from instaseg.engine.predictor import load

        return load
    if name in ("ReadOptions", "open_dataset"):
        from instaseg import data

        return getattr(data, name)
    if name in ("get_model", "list_models"):
        from instaseg import models

        return getattr(models, name)
    raise AttributeError(f"module 'instaseg' has no attribute {name!r}")

"""instaseg: instance segmentation, offline: data, models, the COCO metric and label review.

The Python API mirrors the CLI::

    import instaseg
    ds = instaseg.Dataset.load("train.json")
    model = instaseg.load("runs/best.pt")
    result = model.predict("image.jpg")   # -> instaseg.Instances
"""

from instaseg.data import Dataset
from instaseg.errors import InstasegError
from instaseg.structures import Instances

__version__ = "0.1.0"

__all__ = ["Dataset", "Instances", "InstasegError", "__version__"]

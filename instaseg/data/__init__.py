"""Datasets: the canonical COCO model, format converters, validation, statistics and synthetic data."""

from instaseg.data.dataset import Dataset

__all__ = ["Dataset", "ReadOptions", "open_dataset"]


def __getattr__(name: str):
    # The format readers import YAML, PIL and OpenCV: only pay for them when a dataset is opened.
    if name in ("ReadOptions", "open_dataset"):
        from instaseg.data import convert

        return getattr(convert, name)
    raise AttributeError(f"module 'instaseg.data' has no attribute {name!r}")

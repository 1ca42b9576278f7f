"""Datasets: the canonical COCO model, format converters, validation, statistics and synthetic data."""

from instaseg.data.dataset import Dataset

__all__ = ["Dataset"]

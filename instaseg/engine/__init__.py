"""Running models: training (``train``), checkpoints, and inference (``predictor``, ``predict``)."""

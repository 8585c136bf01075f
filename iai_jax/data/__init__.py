"""Datasets: YouTube-VIS / OVIS readers, the synthetic generator, the checker,
TFDS records and the grain clip pipeline."""

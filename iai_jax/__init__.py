"""iai_jax: Instance As Identity (ECCV 2022) video instance segmentation in JAX."""

__version__ = '0.1.0'

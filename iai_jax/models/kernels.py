"""Which implementation a few ops use, chosen by backend: the one place.

XLA on CPU runs some ops far below its matmul rate, so on CPU iai_jax
writes them another way (same numbers, measured in BENCHMARKS.md):

* 3x3 convolutions producing small maps (< ``SMALL_MAP`` positions): im2col
  and one matrix product (:func:`iai_jax.models.layers.conv3x3`);
* the FFN's depthwise 5x5 convolution: 25 shifted multiply-adds (XLA's CPU
  backward of a grouped convolution is a dense one);
* ResNet's 3x3/2 max pool: the maximum of nine strided views (XLA's CPU
  select-and-scatter backward is slow);
* the association scan over a clip's frames: fully unrolled
  (``train.scan_unroll='auto'``).

On other backends (GPU, TPU) the plain XLA ops are used: XLA's convolution,
grouped convolution, ``reduce_window`` and a rolled scan. :func:`cpu_paths`
decides at trace time; :func:`forced` (tests, benchmarks) or the environment
variable ``IAI_JAX_KERNELS=cpu|generic`` pick one path on any backend.
"""

from __future__ import annotations

import contextlib
import os

import jax

SMALL_MAP = 128  # output positions below which conv3x3 uses im2col on CPU
_forced: list[str] = []


def cpu_paths() -> bool:
  """True where the CPU-specific implementations are used."""
  kind = _forced[-1] if _forced else os.environ.get('IAI_JAX_KERNELS', '')
  if kind:
    if kind not in ('cpu', 'generic'):
      raise ValueError(f'IAI_JAX_KERNELS={kind!r}: use cpu or generic')
    return kind == 'cpu'
  return jax.default_backend() == 'cpu'


@contextlib.contextmanager
def forced(kind: str):
  """Trace with the ``'cpu'`` or ``'generic'`` implementations."""
  if kind not in ('cpu', 'generic'):
    raise ValueError(f'kernels: {kind!r}, use cpu or generic')
  _forced.append(kind)
  try:
    yield
  finally:
    _forced.pop()


def scan_unroll(setting):
  """``train.scan_unroll``: 'auto' -> unrolled on CPU, rolled elsewhere."""
  if setting == 'auto':
    return True if cpu_paths() else 1
  return setting

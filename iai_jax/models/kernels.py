"""Which implementation a few ops use, chosen by backend: the one place.

XLA on CPU runs some ops far below its matmul rate, so on CPU iai_jax
writes them another way (same numbers, measured in BENCHMARKS.md):

* 3x3 convolutions producing small maps (< ``SMALL_MAP`` positions): im2col
  and one matrix product (:func:`iai_jax.models.layers.conv3x3`);
* the FFN's depthwise 5x5 convolution: 25 shifted multiply-adds (XLA's CPU
  backward of a grouped convolution is a dense one);
* ResNet's 3x3/2 max pool: the maximum of nine strided views (XLA's CPU
  select-and-scatter backward is slow);
* the ID bank's 33x33 stride-32 convolution: four matrix products over the
  32x32 blocks (:func:`iai_jax.models.layers.patch_conv`; 157 -> 63 ms on
  a 384x640 ID mask);
* the association scan over a clip's frames: fully unrolled
  (``train.scan_unroll='auto'``).

On other backends (GPU, TPU) the plain XLA ops are used: XLA's convolution,
grouped convolution, ``reduce_window`` and a rolled scan. :func:`cpu_paths`
decides at trace time; :func:`forced` (tests, benchmarks) or the environment
variable ``IAI_JAX_KERNELS=cpu|generic`` pick one path on any backend.

A program exported for several platforms (``python -m iai_jax.export
--platforms=cpu,cuda``) is traced once for all of them: under
:func:`for_platforms` the ops call :func:`select`, which then emits both
implementations behind ``jax.lax.platform_dependent``, so the CPU runs the
CPU one and the accelerator XLA's op (the scan stays rolled there).
"""

from __future__ import annotations

import contextlib
import os

import jax

SMALL_MAP = 128  # output positions below which conv3x3 uses im2col on CPU
_forced: list[str] = []
PER_PLATFORM = 'per_platform'  # both paths, chosen when the program runs


def cpu_paths() -> bool:
  """True where the CPU-specific implementations are used (False while
  tracing for several platforms: see :func:`select`)."""
  if per_platform():
    return False
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


@contextlib.contextmanager
def for_platforms(platforms):
  """Trace a program to be exported for ``platforms`` (jax.export names:
  'cpu', 'cuda', 'rocm', 'tpu'): the CPU paths when all are 'cpu', the
  generic ones when none is, both behind ``lax.platform_dependent`` else."""
  platforms = tuple(platforms)
  if not platforms:
    raise ValueError('kernels.for_platforms: no platform given')
  if all(p == 'cpu' for p in platforms):
    kind = 'cpu'
  elif 'cpu' not in platforms:
    kind = 'generic'
  else:
    kind = PER_PLATFORM
  _forced.append(kind)
  try:
    yield kind
  finally:
    _forced.pop()


def per_platform() -> bool:
  """True while tracing for a mix of CPU and other platforms."""
  return bool(_forced) and _forced[-1] == PER_PLATFORM


def select(cpu_fn, generic_fn, *args):
  """``cpu_fn(*args)`` where :func:`cpu_paths`, else ``generic_fn(*args)``;
  both behind ``jax.lax.platform_dependent`` under a mixed
  :func:`for_platforms` (same output shapes and dtypes)."""
  if per_platform():
    return jax.lax.platform_dependent(*args, cpu=cpu_fn, default=generic_fn)
  return cpu_fn(*args) if cpu_paths() else generic_fn(*args)


def scan_unroll(setting):
  """``train.scan_unroll``: 'auto' -> unrolled on CPU, rolled elsewhere."""
  if setting == 'auto':
    return True if cpu_paths() else 1
  return setting

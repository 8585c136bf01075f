"""Shared test set-up: a compilation cache for the whole session.

Several tests compile the same tiny-model programs (the training step in the
resume test runs in three `train()` calls and in subprocesses). A persistent
XLA cache in a per-session folder lets the later ones load the executable
instead of compiling it again; subprocesses inherit it through the
environment. It changes no numbers.

Tests also compile with XLA's backend optimisation level 0: the tiny
model's training step compiles in 40 s instead of 61 s and runs as fast
(0.73 vs 0.79 s), the same loss to all printed digits. The tests run few
steps of many programs, so compile time is most of the suite's. Set
XLA_FLAGS yourself to override.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_OWN_CACHE = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix='iai_jax_xla_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _OWN_CACHE
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '1')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0')

import jax  # noqa: E402  (after the environment is set)

jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs',
                  float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))


def pytest_unconfigure(config):
  """The process that made the cache folder removes it at the end."""
  if _OWN_CACHE is not None:
    import shutil
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)

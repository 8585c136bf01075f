"""OVIS: IAI + CondInst.

Variants (comma-separated after a colon): tiny, r18, r34, r50 (default), r101,
ms (multi-scale training), bf16.  Example:
  python -m iai_jax.main --config=configs/ovis.py:r101,ms
"""

from iai_jax import config_lib


def get_config(arg=None):
  return config_lib.make_config('ovis', arg)

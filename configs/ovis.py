"""OVIS: IAI + CondInst (25 classes, 25 ID slots, 50 detections a frame).

Variants (comma-separated after a colon): tiny (CPU runs), r18, r34, r50
(default), r101, ms (multi-scale training), bf16. Example:
  python -m iai_jax.main --config=configs/ovis.py:r101,ms
"""

import os

from iai_jax import config_lib

default = config_lib.load_module(os.path.join(os.path.dirname(__file__),
                                              'default.py'))


def get_config(arg=None):
  c = default.get_config()
  c.dataset.name = 'ovis'
  c.dataset.root = 'data/ovis'
  c.model.num_classes = 25
  c.model.max_obj_num = 25
  c.infer.max_per_img = 50
  return config_lib.finalize(c, arg, default.VARIANTS)

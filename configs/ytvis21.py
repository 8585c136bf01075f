"""YouTube-VIS 2021: IAI + CondInst.

Variants (comma-separated after a colon): tiny (CPU runs), r18, r34, r50
(default), r101 (the authors' R101 recipe), ms (multi-scale training), bf16. Example:
  python -m iai_jax.main --config=configs/ytvis21.py:r101,ms
"""

import os

from iai_jax import config_lib

default = config_lib.load_module(os.path.join(os.path.dirname(__file__),
                                              'default.py'))


def get_config(arg=None):
  c = default.get_config()
  c.dataset.name = 'ytvis21'
  c.dataset.root = 'data/ytvis21'
  # the authors' YTVIS-21 recipe: 25 ID slots, 2 clips a GPU (4 GPUs),
  # multi-scale training with one scale per clip
  c.model.max_obj_num = 25
  c.train.batch_size = 8
  c.input.train_scale_range = ((649, 360), (960, 480))
  return config_lib.finalize(c, arg, default.VARIANTS)

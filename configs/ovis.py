"""OVIS: IAI + CondInst (25 classes, 25 ID slots, 50 detections a frame).

Variants (comma-separated after a colon): tiny (CPU runs), r18, r34, r50
(default), r101 (the authors' R101 recipe), ms (multi-scale training), bf16. Example:
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
  # the authors' OVIS recipe: 25 classes, 25 ID slots, 50 detections a
  # frame, 2 clips a GPU (4 GPUs), multi-scale training with the scale drawn
  # for every frame, started from their YouTube-VIS 2019 model (convert it
  # with --skip_mismatched_heads and pass --config.init_from=DIR)
  c.model.num_classes = 25
  c.model.max_obj_num = 25
  c.infer.max_per_img = 50
  c.train.batch_size = 8
  c.input.train_scale_range = ((649, 360), (960, 480))
  c.input.train_scale_per = 'frame'
  return config_lib.finalize(c, arg, default.VARIANTS)

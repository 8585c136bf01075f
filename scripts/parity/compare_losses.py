"""Step-0 training losses of iai_jax against the authors' on the same clip.

  python scripts/parity/compare_losses.py --weights=W.pth \
      --authors=train_losses.json --clip=train_losses_clip.npz

``--authors`` and ``--clip`` are what ``scripts/parity/authors_run.py
--train-losses`` writes: the authors' loss terms (drop path off) and the
exact clip they were computed on (frames, per-instance boxes, labels, masks
and IDs). The clip is given to :func:`iai_jax.train.clip_loss` as one batch
of the data pipeline's layout; every loss term is compared (relative
difference), for the clip and for each time step. Exit 1 above --tol.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

flags.DEFINE_string('weights', None, 'PyTorch state dict (authors\' keys).')
flags.DEFINE_string('authors', None, 'JSON of authors_run.py --train-losses.')
flags.DEFINE_string('clip', None, 'Clip npz of authors_run.py --train-losses.')
flags.DEFINE_string('config', 'configs/ytvis19.py', 'iai_jax config.')
flags.DEFINE_float('tol', 1e-4, 'Largest relative difference allowed.')
flags.mark_flags_as_required(['weights', 'authors', 'clip'])
FLAGS = flags.FLAGS

TERMS = {'cls': 'loss_cls', 'id': 'loss_id', 'box': 'loss_bbox',
         'ctr': 'loss_centerness', 'mask': 'loss_mask'}


def clip_batch(clip, config):
  """The authors' clip in the pipeline's batch layout (one clip)."""
  from iai_jax.data import pipeline
  frames = clip['input_frames_u8']
  t_len, h, w = frames.shape[:3]
  hp, wp = clip['img'].shape[2:]
  n = config.model.max_obj_num
  image = np.zeros((t_len, hp, wp, 3), np.uint8)
  image[:, :h, :w] = frames
  id_map = np.full((t_len, hp, wp), pipeline.BACKGROUND, np.uint8)
  box = np.zeros((t_len, n, 4), np.float32)
  center = np.zeros((t_len, n, 2), np.float32)
  mask4 = np.zeros((t_len, n, hp // 4, wp // 4), np.uint8)
  present = np.zeros((t_len, n), bool)
  id_target = np.full((t_len, n), -1, np.int32)
  label = np.full((n,), -1, np.int32)
  for t in range(t_len):
    arg = clip[f'gt_idmask_argmax_f{t}']
    id_map[t] = np.where(arg < n, arg, pipeline.BACKGROUND)
    for j, k in enumerate(clip[f'gt_ids_f{t}']):
      m = clip[f'gt_masks_f{t}'][j].astype(bool)
      box[t, k] = clip[f'gt_bboxes_f{t}'][j]
      ys, xs = np.nonzero(m)
      area = max(m.sum(), 1e-6)
      center[t, k] = (xs.sum() / area, ys.sum() / area)
      mask4[t, k] = m[2::4, 2::4]
      present[t, k] = True
      id_target[t, k] = clip[f'gt_ids_head_target_f{t}'][j]
      label[k] = clip[f'gt_labels_f{t}'][j]
  batch = {'image': image, 'image_size': np.tile([h, w], (t_len, 1)),
           'id_map': id_map, 'label': label, 'box': box, 'center': center,
           'mask4': mask4, 'present': present, 'id_target': id_target,
           'new_instance': np.zeros((t_len,), bool)}
  return {k: np.asarray(v)[None] for k, v in batch.items()}


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  from iai_jax import config_lib, convert, train
  from iai_jax.models import build_model

  config = config_lib.load_config_file(FLAGS.config)
  with config.unlocked():
    config.model.association.droppath = 0.0  # the authors' run: drop path off
  sd = convert.load_torch_state_dict(FLAGS.weights)
  variables, _ = convert.convert_state_dict(sd, config.model, 'iai')
  variables = jax.tree_util.tree_map(jnp.asarray, variables)
  clip = np.load(FLAGS.clip)
  ref = json.load(open(FLAGS.authors))['droppath_off']
  batch = clip_batch(clip, config)
  model = build_model(config.model)
  _, (parts, _) = jax.jit(lambda p, s, b: train.clip_loss(
      model, p, s, b, jax.random.key(0), config))(
          variables['params'], variables['batch_stats'], batch)
  report, worst = {}, 0.0
  for ours_key, key in TERMS.items():
    a, b = float(parts[ours_key]), float(ref['losses'][key])
    rel = abs(a - b) / max(abs(b), 1e-12)
    worst = max(worst, rel)
    report[key] = {'ours': a, 'authors': b, 'rel_diff': rel}
  print(json.dumps(report, indent=1))
  print(f'largest relative difference {worst:.2e} (tolerance {FLAGS.tol:g})')
  return 0 if worst <= FLAGS.tol else 1


if __name__ == '__main__':
  app.run(main)

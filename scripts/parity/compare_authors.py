"""Compare iai_jax with the authors' IAI on the same weights and frames.

Reads what ``scripts/parity/authors_run.py --infer`` wrote for a video (the
authors' dense outputs of the first frames, every frame's detections and ID
mask, the video's results), converts the same PyTorch weights, runs
:class:`iai_jax.inference.OnlineSegmenter` on the same uint8 frames and
prints, per item, the largest difference:

  python scripts/parity/compare_authors.py --weights=W.pth \
      --authors=infer_480x640.npz [--config=configs/ytvis19.py] [--json=OUT]

Dense tensors: max |ours - theirs| / max |theirs|. Detections: boxes (px),
scores, ID and class probabilities of the same detections in the same order.
ID masks: pixels whose ID differs (and how many of them have a mask
probability within PROB_TOL of 0.5). Results: scores, labels, and mask pixels
that differ. Exit 1 when a check fails.
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
flags.DEFINE_string('authors', None, 'npz of authors_run.py --infer.')
flags.DEFINE_string('config', 'configs/ytvis19.py', 'iai_jax config.')
flags.DEFINE_string('json', '', 'Write the figures here.')
flags.DEFINE_float('dense_tol', 1e-4, 'Dense tolerance (relative to max).')
flags.DEFINE_bool('teacher_id_masks', False,
                  'Write the authors\' ID mask of each frame into our memory '
                  'instead of ours: separates per-frame agreement from the '
                  'feedback of pixels at the 0.5 threshold through the memory.')
flags.mark_flags_as_required(['weights', 'authors'])
# A pixel may come out differently only where a mask probability is this
# close to the 0.5 threshold: the dense outputs agree to ~1e-5 of their
# scale, which moves a probability by up to ~1e-4 through the dynamic head.
PROB_TOL = 1e-3
FLAGS = flags.FLAGS


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    return float('inf')
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _nchw(x):
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  from iai_jax import config_lib, convert, inference, postprocess, preprocess
  from iai_jax.models import rollout

  config = config_lib.load_config_file(FLAGS.config)
  sd = convert.load_torch_state_dict(FLAGS.weights)
  variables, _ = convert.convert_state_dict(sd, config.model, 'iai')
  variables = jax.tree_util.tree_map(jnp.asarray, variables)
  ref = np.load(FLAGS.authors)
  frames = ref['input_frames_u8']
  n_frames = frames.shape[0]
  report, failures = {}, []

  def check(name, value, ok):
    report[name] = value
    if not ok:
      failures.append(name)

  seg = inference.OnlineSegmenter(config, variables)
  net = rollout.Applied(seg.model, variables)
  n = config.model.max_obj_num
  ours_frames = []
  for t in range(n_frames):
    if t == 0:
      seg._start(*frames[0].shape[:2])
    # dense outputs of this frame, from the memory and previous-frame record
    # the segmenter holds before its step
    if FLAGS.teacher_id_masks and t > 0:
      arg = ref[f'post_id_mask_argmax_f{t - 1}']
      masks = np.stack([arg == c for c in range(n - 1)])
      ids = np.where(masks.any(axis=(1, 2)), np.arange(n - 1), -1)
      seg._prev = dict(seg._prev, masks=jnp.asarray(masks),
                       ids=jnp.asarray(ids, jnp.int32),
                       new=jnp.asarray(bool(ref[f'post_new_inst_exist_f{t - 1}'])))
    if f'fpn_p3_f{t}' in ref.files:
      image = inference.prepare_frame(frames[t], seg._resized, seg._padded)
      size = np.asarray(seg._resized, np.int32)
      x = preprocess.normalize(image[None], size[None], config.input)
      check(f'input_f{t}', _rel(_nchw(x), ref['input_tensor'][t:t + 1]),
            _rel(_nchw(x), ref['input_tensor'][t:t + 1]) <= FLAGS.dense_tol)
      prev = seg._prev
      pending = {'cache': prev['cache'], 'new': prev['new'][None],
                 'valid': prev['valid'],
                 'id_mask': postprocess.id_mask(prev['masks'], prev['ids'], n)[None]}
      memory = rollout.write_frame(net, seg._memory, pending)
      feats = net.encode(x)
      c5p, _ = net.associate(feats['c5'], memory, True)
      out = net.decode(feats['c3'], feats['c4'], c5p, False)
      fpn = seg.model.apply(variables, [feats['c3'], feats['c4'], c5p],
                            method=lambda m, f: m.fpn(f))
      pairs = []
      if t == 0:
        pairs += [(f'backbone_{k}_f0', feats[k]) for k in ('c3', 'c4', 'c5')]
      d = config.model.association.d_model
      pairs += [(f'enc_proj_f{t}', c5p[..., :d]),
                (f'backbone_proj_f{t}', c5p[..., 2 * d:]),
                (f'neck_in_embs_f{t}', c5p)]
      pairs += [(f'fpn_p{i + 3}_f{t}', p) for i, p in enumerate(fpn)]
      for i in range(5):
        pairs += [(f'head_cls_l{i}_f{t}', out['cls'][i]),
                  (f'head_id_l{i}_f{t}', out['id'][i]),
                  (f'head_bbox_l{i}_f{t}', out['reg'][i]),
                  (f'head_centerness_l{i}_f{t}', out['ctr'][i]),
                  (f'head_controller_l{i}_f{t}', out['ctrl'][i])]
      pairs.append((f'head_mask_feat_f{t}', out['mask_feats']))
      worst = 0.0
      for key, ours in pairs:
        if key in ref.files:
          r = _rel(_nchw(ours), ref[key])
          worst = max(worst, r)
          check(key, r, r <= FLAGS.dense_tol)
      report[f'dense_worst_f{t}'] = worst
    inst = seg.step(frames[t])
    det = seg.last_detections
    found = np.flatnonzero(det['found'])
    theirs = ref[f'post_det_bboxes_f{t}']
    check(f'num_dets_f{t}', (len(found), int(theirs.shape[0])),
          len(found) == theirs.shape[0])
    if len(found) == theirs.shape[0] and len(found):
      # the same detections; two whose ranking scores are equal to float
      # rounding may come in either order
      order = np.arange(len(found))
      ours_box = det['box'][found]
      for i in range(len(found)):
        j = int(np.argmin(np.abs(ours_box - theirs[i, :4]).sum(1)))
        close = abs(det['score'][found][j] - theirs[i, 4]) <= 1e-5 * abs(
            theirs[i, 4])
        order[i] = j if close else i
      if sorted(order.tolist()) != list(range(len(found))):
        order = np.arange(len(found))
      report[f'det_order_swapped_f{t}'] = int((order != np.arange(len(found))).sum())
      found = found[order]
      box = _rel(det['box'][found], theirs[:, :4])
      score = _rel(det['score'][found], theirs[:, 4])
      idp = _rel(det['id_prob'][found], ref[f'post_det_id_scores_f{t}'][:, :n])
      clsp = _rel(det['cls_prob'][found] * det['ctr'][found][:, None],
                  ref[f'post_det_cls_scores_f{t}'][:, :-1])
      for key, r in (('box', box), ('score', score), ('id_prob', idp),
                     ('cls_score', clsp)):
        check(f'det_{key}_f{t}', r, r <= 1e-4)
    prob = np.asarray(seg.last_device['prob'])
    crop = prob[:, :seg._resized[0], :seg._resized[1]]
    ours_frames.append({
        'prob': prob, 'prob_original': np.asarray(postprocess.resize_bilinear(
            jnp.asarray(crop), tuple(frames[t].shape[:2]))),
        'instances': inst, 'prev': jax.device_get(
            {k: seg._prev[k] for k in ('masks', 'ids')}),
        'num_issued': seg._tracker.num_issued,
        'new': seg._tracker.new_instance})
  tracks = seg.finish()

  # per-frame detections and ID masks
  for t, fr in enumerate(ours_frames):
    ids = fr['prev']['ids']
    report[f'max_inst_id_f{t}'] = (fr['num_issued'],
                                   int(ref[f'post_max_inst_id_f{t}']))
    check(f'max_inst_id_f{t}', report[f'max_inst_id_f{t}'],
          fr['num_issued'] == int(ref[f'post_max_inst_id_f{t}']))
    their_ids = ref[f'post_id_mask_argmax_f{t}']
    mask = np.asarray(postprocess.id_mask(jnp.asarray(fr['prev']['masks']),
                                          jnp.asarray(ids), n))
    ours_arg = mask.argmax(-1)
    ours_arg = np.where(mask.max(-1) > 0, ours_arg, 0)
    where = ours_arg != their_ids
    diff = int(where.sum())
    # a pixel may differ only where a detection's probability is within
    # float rounding of the 0.5 threshold
    near = np.abs(fr['prob'][:, where] - 0.5).min(axis=0) < PROB_TOL \
        if diff else np.zeros((0,), bool)
    check(f'id_mask_pixels_differ_f{t}', (diff, int(near.sum())),
          bool(near.all()))

  # video results
  scores = ref['result_scores']
  labels = ref['result_labels']
  check('num_results', (len(tracks), int(len(scores))),
        len(tracks) == len(scores))
  if len(tracks) == len(scores) and len(scores):
    ours_s = np.asarray([t['score'] for t in tracks])
    ours_l = np.asarray([t['label'] for t in tracks])
    check('result_scores', _rel(ours_s, scores), _rel(ours_s, scores) <= 1e-4)
    check('result_labels_equal', bool((ours_l == labels).all()),
          bool((ours_l == labels).all()))
    from iai_jax.results import decode_mask
    their_masks = ref['result_masks']
    present = ref['result_mask_present']
    differ, off = 0, 0
    for k, tr in enumerate(tracks):
      for t, seg_t in enumerate(tr['segmentations']):
        if (seg_t is None) != (not present[k, t]):
          check(f'result_{k}_presence_f{t}', False, False)
          continue
        if seg_t is not None:
          where = decode_mask(seg_t).astype(bool) != their_masks[k, t].astype(bool)
          differ += int(where.sum())
          if where.any():
            p = ours_frames[t]['prob_original'][:, where]
            off += int((np.abs(p - 0.5).min(axis=0) >= PROB_TOL).sum())
    check('result_mask_pixels_differ', (differ, off), off == 0)
  print(json.dumps(report, indent=1, default=str))
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump(report, f, indent=1, default=str)
  print('FAILED: ' + ', '.join(failures) if failures else 'all checks passed')
  return 1 if failures else 0


if __name__ == '__main__':
  app.run(main)

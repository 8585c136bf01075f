"""Ablation switches (paper Table 4): memory branches and the mask-IoU tracker."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iai_jax import config_lib, inference, tracking, train
from iai_jax.models import build_model
from iai_jax.models import backbones, rollout
from iai_jax.models import iai as iai_model

COMBOS = [(True, True), (False, True), (True, False), (False, False)]


def _config(use_global=True, use_local=True, **infer):
  cfg = config_lib.make_config('ytvis19', 'tiny')
  with cfg.unlocked():
    cfg.model.association.use_global_memory = use_global
    cfg.model.association.use_local_memory = use_local
    for k, v in infer.items():
      cfg.infer[k] = v
  return cfg


# ----------------------------------------------------------------- config
def test_defaults_are_full_iai():
  cfg = config_lib.make_config('ytvis19')
  assert cfg.model.association.use_global_memory is True
  assert cfg.model.association.use_local_memory is True
  assert cfg.infer.tracker == 'id_head'
  assert isinstance(tracking.make_tracker(cfg), tracking.IdTracker)
  with cfg.unlocked():
    cfg.infer.tracker = 'kalman'
  with pytest.raises(ValueError, match='infer.tracker'):
    config_lib.check_config(cfg)
  with pytest.raises(ValueError, match='infer.tracker'):
    tracking.make_tracker(cfg)


def test_switches_keep_the_parameter_tree():
  """Same variables (so checkpoints fit) for every setting of the switches."""
  shapes = []
  for g, l in COMBOS:
    model = build_model(_config(g, l).model)
    abstract = iai_model.abstract_variables(model)
    shapes.append(jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), abstract))
  for s in shapes[1:]:
    assert s == shapes[0]
  assert iai_model.count_params(
      iai_model.abstract_variables(build_model(_config().model))['params']) > 0


# ----------------------------------------------------------------- association
@pytest.fixture(scope='module')
def tiny_variables():
  """Random variables of the tiny model, made from the abstract ones (much
  faster than compiling ``init`` on a busy 2-core machine): He-scaled
  normal weights, random biases, unit scales and BatchNorm statistics."""
  abstract = iai_model.abstract_variables(build_model(_config().model))
  leaves, tree = jax.tree_util.tree_flatten_with_path(abstract)
  rng = np.random.default_rng(0)
  out = []
  for path, a in leaves:
    name = str(getattr(path[-1], 'key', path[-1]))
    if name in ('var', 'scale'):
      x = np.ones(a.shape)
    elif name == 'mean' or len(a.shape) < 2:
      x = 0.1 * rng.normal(size=a.shape)
    else:
      x = rng.normal(size=a.shape) * np.sqrt(2.0 / np.prod(a.shape[:-1]))
    out.append(jnp.asarray(x, a.dtype))
  return jax.tree_util.tree_unflatten(tree, out)


def _memories():
  """A mid-video memory (frame 2, two global slots filled) and two copies of
  it: one with other global contents, one with other local contents."""
  cfg = _config()
  a = cfg.model.association
  mem = rollout.empty_memory(cfg.model, 1, (64, 96))  # c5 2 x 3
  rng = np.random.default_rng(0)
  rand = lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype)
  valid = np.zeros((1, a.global_slots), bool)
  valid[0, :2] = True
  base = mem.replace(global_k=rand(mem.global_k), global_v=rand(mem.global_v),
                     global_valid=jnp.asarray(valid),
                     global_time=jnp.asarray([[0, 1] + [0] * (a.global_slots - 2)]),
                     local_k=rand(mem.local_k), local_v=rand(mem.local_v),
                     frame=jnp.asarray([2]), last_write=jnp.asarray([2]))
  other_global = base.replace(global_k=rand(mem.global_k),
                              global_v=rand(mem.global_v))
  other_local = base.replace(local_k=rand(mem.local_k),
                             local_v=rand(mem.local_v))
  return mem, base, other_global, other_local


@pytest.mark.parametrize('use_global,use_local', COMBOS)
def test_association_reads_only_the_switched_on_memory(
    tiny_variables, use_global, use_local):
  cfg = _config(use_global, use_local)
  model = build_model(cfg.model)
  c5 = jax.random.normal(jax.random.key(3), (1, 2, 3,
                                             backbones.get(cfg.model).channels['c5']))
  assoc = jax.jit(lambda v, mem: model.apply(v, c5, mem, True,
                                             method=model.associate)[0])
  empty, base, other_g, other_l = _memories()
  out = np.asarray(assoc(tiny_variables, base))
  out_g = np.asarray(assoc(tiny_variables, other_g))
  out_l = np.asarray(assoc(tiny_variables, other_l))
  out_first = np.asarray(assoc(tiny_variables, empty))
  assert np.isfinite(out).all() and np.isfinite(out_first).all()
  # global memory contents matter exactly when the global branch is on
  if use_global:
    assert np.abs(out - out_g).max() > 1e-4
  else:
    np.testing.assert_array_equal(out, out_g)
  if use_local:
    assert np.abs(out - out_l).max() > 1e-4
  else:
    np.testing.assert_array_equal(out, out_l)
  if not (use_global or use_local):
    # no association: a mid-video frame is treated as a first frame
    np.testing.assert_array_equal(out, out_first)
  else:
    assert np.abs(out - out_first).max() > 1e-4


def test_no_association_training_clip_is_frame_by_frame(tiny_variables):
  """The scanned training cell: with both switches off each frame is alone
  (same outputs wherever it sits in the clip); with both on it is not."""
  rng = np.random.default_rng(1)
  f0, f1 = (rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2))
  id_map = np.full((2, 2, 64, 64), 255, np.uint8)
  id_map[:, :, 8:40, 8:40] = 0
  batch = {'image': jnp.asarray(np.stack([np.stack([f0, f1]),
                                          np.stack([f1, f1])])),
           'image_size': jnp.full((2, 2, 2), 64, jnp.int32),
           'id_map': jnp.asarray(id_map),
           'new_instance': jnp.asarray([[True, False], [True, False]])}
  v = tiny_variables
  for g, l in ((False, False), (True, True)):
    cfg = _config(g, l)
    model = build_model(cfg.model)
    out, _ = jax.jit(lambda p, cfg=cfg, model=model: train.clip_forward(
        model, p, v['batch_stats'], batch, jax.random.key(0), cfg,
        train=False))(v['params'])
    cls = np.asarray(out['cls'][0]).reshape(2, 2, -1)  # (clip, frame, .)
    assert np.isfinite(cls).all()
    if not (g or l):
      # frame 1 after f0 == frame 1 after f1 == f1 as a clip's first frame
      np.testing.assert_allclose(cls[0, 1], cls[1, 1], rtol=0, atol=1e-5)
      np.testing.assert_allclose(cls[0, 1], cls[1, 0], rtol=0, atol=1e-5)
    else:
      assert np.abs(cls[0, 1] - cls[1, 1]).max() > 1e-4


def test_switched_off_branches_get_no_gradient(tiny_variables):
  """Training with dropout: finite gradients; the output projections of
  switched-off branches get exactly none (their parameters are unused)."""
  _, base, _, _ = _memories()
  params = tiny_variables['params']
  for g, l in ((False, True), (True, False)):  # each branch on once, off once
    cfg = _config(g, l)
    model = build_model(cfg.model)
    c5 = jax.random.normal(jax.random.key(3), (1, 2, 3,
                                               backbones.get(cfg.model).channels['c5']))

    def loss(assoc, model=model, c5=c5):
      out, _ = model.apply({'params': {**params, 'association': assoc}}, c5,
                           base, False, method=model.associate,
                           rngs={'dropout': jax.random.key(1)})
      return jnp.sum(out ** 2)

    grads = jax.jit(jax.grad(loss))(params['association'])
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(grads))
    layer = grads['layers_0']
    for name, on in (('global_out', g), ('local_out', l)):
      assert bool(np.any(layer[name]['kernel'])) == on, (name, g, l)


def test_online_segmenter_picks_the_tracker(tiny_variables):
  seg = inference.OnlineSegmenter(
      _config(False, False, tracker='mask_iou', mask_iou_threshold=0.4),
      tiny_variables)
  seg._start(90, 150)
  assert isinstance(seg._tracker, tracking.MaskIouTracker)
  assert seg._tracker.iou_threshold == 0.4
  seg = inference.OnlineSegmenter(_config(), tiny_variables)
  seg._start(90, 150)
  assert isinstance(seg._tracker, tracking.IdTracker)
  with pytest.raises(ValueError, match='infer.tracker'):
    inference.OnlineSegmenter(_config(tracker='sort'), tiny_variables)


# ----------------------------------------------------------------- tracker
def _box(y0, y1, x0, x1, size=(10, 10)):
  m = np.zeros(size, bool)
  m[y0:y1, x0:x1] = True
  return m


def test_mask_iou_matrix_by_hand():
  a = np.stack([_box(0, 2, 0, 4), _box(5, 6, 5, 6), np.zeros((10, 10), bool)])
  b = np.stack([_box(0, 2, 2, 6), np.zeros((10, 10), bool)])
  iou = tracking.mask_iou_matrix(a, b)
  # 8 and 8 pixels, 4 shared -> 4 / 12; empty masks -> 0
  np.testing.assert_allclose(iou, [[4 / 12, 0], [0, 0], [0, 0]], rtol=1e-6)


def test_mask_iou_tracker_scripted_video():
  t = tracking.MaskIouTracker(num_ids=10, iou_threshold=0.3)
  A = _box(0, 4, 0, 4)         # 16 px
  B = _box(0, 4, 6, 10)
  C = _box(6, 10, 0, 4)
  # frame 0: everything new, IDs in score order
  ids = t.step(np.stack([A, B]))
  assert ids.tolist() == [0, 1] and t.new_instance and t.num_issued == 2
  # frame 1: B moved by one column (IoU 12/20 = 0.6), A unchanged, C new;
  # a not-kept detection gets -1 and takes no ID
  B1 = _box(0, 4, 5, 9)
  ids = t.step(np.stack([B1, A, C, A]), keep=np.array([1, 1, 1, 0], bool))
  assert ids.tolist() == [1, 0, 2, -1] and t.new_instance
  # frame 2: A shifted by two columns (IoU 8/24 = 0.33 >= 0.3: continues);
  # a box under C with IoU 4/28 < 0.3 is a new object; B1 is gone
  A2 = _box(0, 4, 2, 6)
  C2 = _box(7, 10, 0, 4)        # 12 px inside C: IoU 12/16 = 0.75
  low = _box(9, 10, 0, 4)       # 4 px inside C: IoU 4/16 = 0.25 < 0.3
  ids = t.step(np.stack([low, A2, C2]))
  # one-to-one: C's ID goes to C2 (best IoU); 'low' is new
  assert ids.tolist() == [3, 0, 2] and t.new_instance
  # frame 3: B reappears after a frame without it: a new ID, not 1
  ids = t.step(np.stack([B1, A2]))
  assert ids.tolist() == [4, 0] and t.new_instance
  # frame 4: only continuations -> no new instance
  ids = t.step(np.stack([A2, B1]))
  assert ids.tolist() == [0, 4] and not t.new_instance
  # an empty frame ends every track
  ids = t.step(np.zeros((0, 10, 10), bool))
  assert ids.tolist() == [] and not t.new_instance
  assert t.step(A2[None]).tolist() == [5]
  t.reset()
  assert t.step(np.stack([C, A])).tolist() == [0, 1]


def test_mask_iou_tracker_one_to_one_prefers_the_better_overlap():
  t = tracking.MaskIouTracker(num_ids=10, iou_threshold=0.3)
  t.step(_box(0, 4, 0, 4)[None])
  # both overlap the track; the second (lower score) overlaps more
  ids = t.step(np.stack([_box(0, 4, 1, 5), _box(0, 4, 0, 4)]))
  assert ids.tolist() == [1, 0]


def test_mask_iou_tracker_cap_like_id_tracker():
  # N = 4: the counter stops at N-2 = 2, as the authors' does: IDs 0 and 1
  # are one object each, every later new instance shares ID 2
  t = tracking.MaskIouTracker(num_ids=4, iou_threshold=0.3)
  A, B, C = _box(0, 3, 0, 3), _box(0, 3, 5, 8), _box(6, 9, 0, 3)
  D = _box(6, 9, 5, 8)
  ids = t.step(np.stack([A, B, C]))
  assert ids.tolist() == [0, 1, 2] and t.new_instance and t.num_issued == 2
  # C continues ID 2 by overlap; D is new and also gets 2
  ids = t.step(np.stack([C, B, A, D]))
  assert ids.tolist() == [2, 1, 0, 2] and t.new_instance
  assert t.num_issued == 2
  ids = t.step(np.stack([B, A]))
  assert ids.tolist() == [1, 0] and not t.new_instance
  # the same IDs as the ID-head tracker gives four new instances
  idt = tracking.IdTracker(4)
  assert idt.step(np.zeros((4, 4), np.float32)).tolist() == [0, 1, 2, 2]
  assert t.cap == idt.cap == 2


def test_trackers_share_the_online_call():
  masks = np.stack([_box(0, 4, 0, 4), _box(5, 9, 5, 9)])
  keep = np.array([True, False])
  prob = np.full((2, 5), 0.1)
  a, b = tracking.IdTracker(5), tracking.IdTracker(5)
  np.testing.assert_array_equal(a.assign(prob, masks, keep), b.step(prob, keep))
  m = tracking.MaskIouTracker(5)
  assert m.assign(prob, masks, keep).tolist() == [0, -1]
  with pytest.raises(ValueError, match='mask size'):
    m.step(np.zeros((1, 4, 4), bool))


# ------------------------------------------------- shared detector init
def test_detector_init_keeps_the_detector_and_frees_the_association(
    tmp_path):
  """scripts/detector_init.py: the association block and ID head are left
  out, every other array is kept as it was; a run with other ID slots and
  memory switches starts from it with those parts fresh."""
  import importlib.util
  import os

  from iai_jax import checkpoints
  spec = importlib.util.spec_from_file_location(
      'detector_init', os.path.join(os.path.dirname(__file__), '..',
                                    'scripts', 'detector_init.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = _config()
  model = build_model(cfg.model)
  rng = np.random.default_rng(0)
  fake = lambda m: jax.tree.map(
      lambda a: rng.normal(size=a.shape).astype(a.dtype),
      iai_model.abstract_variables(m))
  trained = fake(model)
  part, dropped = mod.detector_part(trained)
  assert dropped == ['params/association', 'params/head/conv_id',
                     'params/head/id_convs_0']
  flat_all = checkpoints.flatten(trained)
  flat_part = checkpoints.flatten(part)
  assert set(flat_part) == {
      p for p in flat_all
      if p[1] != 'association' and not p[2:3] in (('conv_id',),
                                                  ('id_convs_0',))}
  checkpoints.save_variables(str(tmp_path / 'det'), part,
                             {'source': 'test', 'fresh': dropped})
  # another number of ID slots: only the fresh parts change shape
  other = _config(use_global=False)
  with other.unlocked():
    other.model.max_obj_num = cfg.model.max_obj_num + 5
    other.init_from = str(tmp_path / 'det')
  fresh = fake(build_model(other.model))
  merged = checkpoints.flatten(checkpoints.init_from(other, fresh,
                                                     log=lambda m: None))
  fresh_flat = checkpoints.flatten(fresh)
  for p, x in merged.items():
    if p in flat_part:
      np.testing.assert_array_equal(x, flat_part[p])
    else:
      np.testing.assert_array_equal(x, fresh_flat[p])
  assert any(p[1] == 'association' for p in merged)

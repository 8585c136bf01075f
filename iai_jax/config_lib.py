"""Building and checking the ml_collections configs of iai_jax.

Every file in ``configs/`` is a thin ``get_config(arg)`` wrapper around
:func:`make_config`.  ``arg`` is a comma-separated list of variants
(``tiny``, ``r101``, ``ms`` ...), e.g. ``--config=configs/ytvis19.py:r101,ms``.

The returned config is locked: assigning a key that does not exist (from code
or from a ``--config.some.key=value`` override) raises an error naming the key.
"""

from __future__ import annotations

import math

import ml_collections

# Dataset presets: the numbers of the design card (section "Notation").
DATASETS = {
    'ytvis19': dict(num_classes=40, max_obj_num=20, max_per_img=10,
                    root='data/ytvis19'),
    'ytvis21': dict(num_classes=40, max_obj_num=20, max_per_img=10,
                    root='data/ytvis21'),
    'ovis': dict(num_classes=25, max_obj_num=25, max_per_img=50,
                 root='data/ovis'),
    'synthetic': dict(num_classes=4, max_obj_num=10, max_per_img=10,
                      root='data/synthetic'),
}

TRACKERS = ('id_head', 'mask_iou')

VARIANTS = ('tiny', 'r18', 'r34', 'r50', 'r101', 'ms', 'bf16')


def base_config(dataset: str) -> ml_collections.ConfigDict:
  """The full-size recipe of the design card for one dataset preset."""
  if dataset not in DATASETS:
    raise ValueError(f'unknown dataset preset {dataset!r}; '
                     f'choose one of {sorted(DATASETS)}')
  preset = DATASETS[dataset]
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = dataset
  c.dataset.root = preset['root']
  # Paths relative to ``root`` (absolute paths are used as they are).
  c.dataset.train_json = 'train.json'
  c.dataset.train_frames = 'train/JPEGImages'
  c.dataset.val_json = 'valid.json'
  c.dataset.val_frames = 'valid/JPEGImages'
  # Local evaluation without public validation ground truth: a deterministic
  # held-out fraction of the training videos (by video id, fixed seed).
  c.dataset.heldout_fraction = 0.1
  c.dataset.heldout_seed = 0
  # Where the TFDS array_record files are written / read.
  c.dataset.tfds_dir = ''  # '' -> <root>/tfds
  c.dataset.synthetic = ml_collections.ConfigDict()
  c.dataset.synthetic.num_videos = 0  # > 0: generate this dataset if missing
  c.dataset.synthetic.num_frames = 12
  c.dataset.synthetic.height = 96
  c.dataset.synthetic.width = 160
  c.dataset.synthetic.occlusion = 0.3  # 0..1, how often instances overlap
  c.dataset.synthetic.max_instances = 4
  c.dataset.synthetic.seed = 0

  # A converted or trained checkpoint directory to start training from.
  c.init_from = ''

  m = c.model = ml_collections.ConfigDict()
  m.num_classes = preset['num_classes']
  # N: ID slots. IDs 0..N-2 name instances, N-1 means "new".
  m.max_obj_num = preset['max_obj_num']
  # Compute dtype; parameters always stay float32.
  m.dtype = 'float32'

  m.backbone = ml_collections.ConfigDict()
  m.backbone.depth = 50
  m.backbone.width = 64  # channels of the stem; 64 for the real ResNets
  m.backbone.frozen_stages = 1  # stem and stage 1 are not trained

  m.fpn = ml_collections.ConfigDict()
  m.fpn.channels = 256
  m.fpn.strides = (8, 16, 32, 64, 128)

  m.head = ml_collections.ConfigDict()
  m.head.channels = 256
  m.head.num_convs = 4
  m.head.id_convs = 1
  m.head.gn_groups = 32
  m.head.prior_prob = 0.01

  m.mask_branch = ml_collections.ConfigDict()
  m.mask_branch.channels = 128
  m.mask_branch.num_convs = 4
  m.mask_branch.out_channels = 8  # F_mask channels; the dynamic head needs 8
  m.mask_branch.bn_momentum = 0.9  # flax convention (torch momentum 0.1)
  # Stride of F_mask: 8 as in CondInst; 4 for finer masks on small frames
  m.mask_branch.out_stride = 8
  # out_stride 4 only: True runs the mask tower on the stride-4 grid; False
  # keeps it at stride 8 and upsamples the 8-channel F_mask x2 (cheaper)
  m.mask_branch.upsample_before_tower = True

  a = m.association = ml_collections.ConfigDict()
  a.d_model = 256
  a.num_layers = 1
  a.self_heads = 4
  a.att_heads = 2
  a.ffn_dim = 1024
  a.gn_groups = 32
  a.max_dis = 7  # local window 15 x 15
  a.droppath = 0.1
  a.id_bank_kernel = 33
  a.global_slots = 16  # fixed global-memory capacity (first frame included)
  a.global_interval = 3
  # Ablations (paper Table 4). False: that branch of every LSTT layer adds
  # nothing (not computed; its parameters are kept, so checkpoints and the
  # parameter count do not change, and the memory is still written). Both
  # False: no association, each frame alone (IDs are still predicted).
  a.use_global_memory = True
  a.use_local_memory = True

  i = c.input = ml_collections.ConfigDict()
  i.size = (360, 640)  # (short, long) side the frames are resized to
  i.size_divisor = 32
  i.mean = (123.68, 116.779, 103.939)  # RGB, as the design card
  i.std = (58.393, 57.12, 57.375)
  # multi-scale training: shorter side drawn from this range (empty = off)
  i.train_short_sides = ()
  i.train_max_long = 640

  t = c.train = ml_collections.ConfigDict()
  t.clip_len = 5
  t.max_stride = 3
  t.flip = True  # random horizontal flip of whole clips
  t.batch_size = 16
  t.epochs = 12
  t.steps = 0  # 0: derived from epochs and the dataset size
  t.lr = 1e-4
  t.weight_decay = 1e-4
  t.backbone_lr_mult = 0.1
  t.backbone_wd_mult = 0.9
  t.warmup_steps = 500
  t.warmup_factor = 0.001
  t.decay_epochs = (8, 11)
  t.grad_clip = 0.0
  t.scan_unroll = True  # unroll the association scan over the clip (bool/int)
  t.max_mask_samples = 64  # positive locations per frame for the mask loss
  t.log_every = 20
  t.checkpoint_every = 1000
  t.keep_checkpoints = 3
  t.data_workers = 0  # grain worker processes for decoding
  t.mesh_axes = ('data',)
  t.mesh_shape = (-1,)  # -1: all devices
  t.distributed = False  # call jax.distributed.initialize() (multi-host)

  e = c.infer = ml_collections.ConfigDict()
  e.candidates_per_level = 200
  e.score_thr = 0.1
  e.id_thr = 0.1
  e.nms_iou = 0.5
  e.max_per_img = preset['max_per_img']
  e.overlap_keep = 0.1
  e.video_score_thr = 0.05
  e.mask_thr = 0.5
  # How IDs are given: 'id_head' (IAI: Hungarian on the ID head's
  # probabilities) or 'mask_iou' (tracking-by-detection baseline: each
  # detection's mask matched to the previous frame's tracked masks).
  e.tracker = 'id_head'
  e.mask_iou_threshold = 0.3  # 'mask_iou': lowest IoU that continues a track
  return c


def _apply_variant(c: ml_collections.ConfigDict, variant: str) -> None:
  if variant in ('r18', 'r34', 'r50', 'r101'):
    c.model.backbone.depth = int(variant[1:])
  elif variant == 'ms':
    # multi-scale training of the design card: shorter side 360..480, <= 960.
    c.input.train_short_sides = (360, 392, 424, 456, 480)
    c.input.train_max_long = 960
  elif variant == 'bf16':
    c.model.dtype = 'bfloat16'
  elif variant == 'tiny':
    # Same architecture, narrow and small: for CPU tests and quick runs.
    m = c.model
    m.backbone.depth = 18
    m.backbone.width = 32
    m.fpn.channels = 64
    m.head.channels = 64
    m.mask_branch.channels = 32
    m.association.d_model = 64
    m.association.ffn_dim = 128
    m.association.global_slots = 4
    c.input.size = (96, 160)
    c.input.train_max_long = 160
    c.train.batch_size = 2
    c.train.warmup_steps = 10
  else:
    raise ValueError(f'unknown config variant {variant!r}; '
                     f'known variants: {", ".join(VARIANTS)}')


def make_config(dataset: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Preset ``dataset`` with the comma-separated variants in ``arg``."""
  c = base_config(dataset)
  for variant in [v.strip() for v in (arg or '').split(',') if v.strip()]:
    _apply_variant(c, variant)
  check_config(c)
  c.lock()
  return c


def c5_channels(model_cfg) -> int:
  depth, width = model_cfg.backbone.depth, model_cfg.backbone.width
  expansion = 1 if depth in (18, 34) else 4
  return width * 8 * expansion


def check_config(c: ml_collections.ConfigDict) -> None:
  """Raise ValueError with a readable message for inconsistent settings."""
  m = c.model
  if m.backbone.depth not in (18, 34, 50, 101):
    raise ValueError(f'model.backbone.depth={m.backbone.depth}: '
                     'supported depths are 18, 34, 50, 101')
  if m.dtype not in ('float32', 'bfloat16'):
    raise ValueError(f'model.dtype={m.dtype!r}: use float32 or bfloat16')
  if m.max_obj_num < 2:
    raise ValueError('model.max_obj_num must be >= 2 (one ID plus "new")')
  a = m.association
  for name, heads in (('self_heads', a.self_heads), ('att_heads', a.att_heads)):
    if a.d_model % heads:
      raise ValueError(f'model.association.d_model={a.d_model} is not '
                       f'divisible by model.association.{name}={heads}')
  if 2 * a.d_model >= c5_channels(m):
    raise ValueError('model.association.d_model is too large: C5\' = '
                     '[X, LSTT(X), classification projection] must keep the '
                     f'C5 width {c5_channels(m)}')
  if a.global_slots < 1:
    raise ValueError('model.association.global_slots must be >= 1')
  for name, ch, groups in (('head.channels', m.head.channels, m.head.gn_groups),
                           ('association.ffn_dim', a.ffn_dim, a.gn_groups)):
    if ch % groups:
      raise ValueError(f'model.{name}={ch} is not divisible by its '
                       f'GroupNorm groups ({groups})')
  if m.mask_branch.out_channels != 8:
    raise ValueError('model.mask_branch.out_channels must be 8: the dynamic '
                     'mask head has 169 parameters for 8 feature channels')
  if m.mask_branch.out_stride not in (4, 8):
    raise ValueError(f'model.mask_branch.out_stride={m.mask_branch.out_stride}: '
                     'choose 8 (CondInst) or 4 (finer masks on small frames)')
  if c.infer.tracker not in TRACKERS:
    raise ValueError(f'infer.tracker={c.infer.tracker!r}: choose one of '
                     f'{", ".join(TRACKERS)}')
  if not 0.0 <= c.infer.mask_iou_threshold <= 1.0:
    raise ValueError('infer.mask_iou_threshold must be in [0, 1]')
  if c.input.size_divisor % 32:
    raise ValueError('input.size_divisor must be a multiple of 32')


def padded_size(height: int, width: int, divisor: int = 32) -> tuple[int, int]:
  """Size after padding to a multiple of ``divisor`` (360x640 -> 384x640)."""
  return (int(math.ceil(height / divisor) * divisor),
          int(math.ceil(width / divisor) * divisor))


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Load ``path/to/config.py[:variants]`` the way ``--config=`` does."""
  import importlib.util
  import os
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise ValueError(f'config file {path!r} not found; pass e.g. '
                     '--config=configs/ytvis19.py')
  module_spec = importlib.util.spec_from_file_location('_iai_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def check_override_key(config: ml_collections.ConfigDict, dotted: str) -> None:
  """Raise ValueError naming ``dotted`` when it is not a key of ``config``."""
  node, walked = config, []
  for part in dotted.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      where = '.'.join(walked) or 'the top level'
      keys = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      raise ValueError(f'unknown config key {dotted!r}: {where} has no '
                       f'{part!r}; known keys there: {", ".join(keys)}')
    node = node[part]
    walked.append(part)

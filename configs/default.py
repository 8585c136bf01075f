"""The IAI recipe: every key and its value (YouTube-VIS 2019, ResNet-50).

The numbers of the authors' released configuration (design card,
``../shared/design/architecture.md``). The dataset configs (ytvis19.py,
ytvis21.py, ovis.py, synthetic.py) start from :func:`get_config` and change
what differs; :data:`VARIANTS` are the variants every config accepts after a
colon (``--config=configs/ytvis19.py:r101,ms``). Each variant is a dict of
dotted keys and values; iai_jax.config_lib applies them in order, checks the
result and locks it.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.dataset = d = ml_collections.ConfigDict()
  d.name = 'ytvis19'
  d.root = 'data/ytvis19'
  # The annotation reader: iai_jax.data.<format> (YouTube-VIS / OVIS JSON).
  d.format = 'vis_json'
  # Paths relative to ``root`` (absolute paths are used as they are).
  d.train_json = 'train.json'
  d.train_frames = 'train/JPEGImages'
  d.val_json = 'valid.json'
  d.val_frames = 'valid/JPEGImages'
  # Local evaluation without public validation ground truth: a deterministic
  # held-out fraction of the training videos (by video id, fixed seed).
  d.heldout_fraction = 0.1
  d.heldout_seed = 0
  # Where the TFDS array_record files are written / read.
  d.tfds_dir = ''  # '' -> <root>/tfds
  d.synthetic = s = ml_collections.ConfigDict()
  s.num_videos = 0  # > 0: generate this dataset if missing
  s.num_frames = 12
  s.height = 96
  s.width = 160
  s.occlusion = 0.3  # 0..1, how often instances overlap
  s.max_instances = 4
  s.seed = 0
  # 'tracks' (moving shapes) or 'reid' (gaps behind an occluder and out of
  # the picture, crossing look-alikes, fast movers, late entries)
  s.kind = 'tracks'

  # A converted or trained checkpoint directory to start training from.
  c.init_from = ''

  m = c.model = ml_collections.ConfigDict()
  m.num_classes = 40
  # N: ID slots. IDs 0..N-2 name instances, N-1 means "new".
  m.max_obj_num = 20
  # Compute dtype; parameters always stay float32.
  m.dtype = 'float32'

  # iai_jax.models.backbones.<name>; the other keys are the backbone's own.
  m.backbone = b = ml_collections.ConfigDict()
  b.name = 'resnet'
  b.depth = 50
  b.width = 64  # channels of the stem; 64 for the real ResNets
  b.frozen_stages = 1  # stem and stage 1 are not trained

  m.fpn = ml_collections.ConfigDict()
  m.fpn.channels = 256

  m.head = h = ml_collections.ConfigDict()
  h.channels = 256
  h.num_convs = 4
  h.id_convs = 1
  h.gn_groups = 32
  h.prior_prob = 0.01

  m.mask_branch = mb = ml_collections.ConfigDict()
  mb.channels = 128
  mb.num_convs = 4
  mb.bn_momentum = 0.9  # flax convention (torch momentum 0.1)
  # Stride of F_mask: 8 as in CondInst; 4 for finer masks on small frames
  mb.out_stride = 8
  # out_stride 4 only: True runs the mask tower on the stride-4 grid; False
  # keeps it at stride 8 and upsamples the 8-channel F_mask x2 (cheaper)
  mb.upsample_before_tower = True

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
  # Multi-scale training, mmdet's 'range' mode: ((long_lo, short_lo),
  # (long_hi, short_hi)); a long and a short edge are drawn uniformly and
  # the frame is fitted into them. () = off (input.size).
  i.train_scale_range = ()
  i.train_scale_per = 'clip'  # draw the scale once per 'clip' or per 'frame'

  t = c.train = ml_collections.ConfigDict()
  t.clip_len = 5
  t.max_stride = 3
  t.clips_per_video = 5  # an epoch: this many clips of every video
  t.flip = True  # random horizontal flip, drawn for every frame
  t.batch_size = 16  # 4 GPUs x 4 clips
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
  # unroll the association scan over the clip: bool / int, or 'auto'
  # (unrolled on CPU, where XLA runs the rolled backward ~20% slower)
  t.scan_unroll = 'auto'
  # mask loss: 0 = every positive location (the recipe); K > 0 = a random K
  # of them per frame (less memory)
  t.max_mask_samples = 0
  # the authors' training writes a frame into the global memory only by the
  # interval rule, never for a new instance; True also for new instances
  t.new_instance_memory_writes = False
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
  e.max_per_img = 10
  e.overlap_keep = 0.1
  e.video_score_thr = 0.05
  e.mask_thr = 0.5
  # How IDs are given: 'id_head' (IAI: Hungarian on the ID head's
  # probabilities) or 'mask_iou' (tracking-by-detection baseline: each
  # detection's mask matched to the previous frame's tracked masks).
  e.tracker = 'id_head'
  e.mask_iou_threshold = 0.3  # 'mask_iou': lowest IoU that continues a track
  return c


VARIANTS = {
    'r18': {'model.backbone.depth': 18},
    'r34': {'model.backbone.depth': 34},
    'r50': {'model.backbone.depth': 50},
    # the authors' R101 recipe: 1000 candidates a level, class threshold
    # 0.05, 2 clips a GPU (their R101 model also trains multi-scale: r101,ms)
    'r101': {'model.backbone.depth': 101,
             'infer.candidates_per_level': 1000, 'infer.score_thr': 0.05,
             'train.batch_size': 8},
    # the authors' multi-scale training: long edge 649..960, short 360..480
    'ms': {'input.train_scale_range': ((649, 360), (960, 480))},
    'bf16': {'model.dtype': 'bfloat16'},
    # Same architecture, narrow and small: for CPU tests and quick runs.
    'tiny': {
        'model.backbone.depth': 18,
        'model.backbone.width': 32,
        'model.fpn.channels': 64,
        'model.head.channels': 64,
        'model.mask_branch.channels': 32,
        'model.association.d_model': 64,
        'model.association.ffn_dim': 128,
        'model.association.global_slots': 4,
        'input.size': (96, 160),
        'train.batch_size': 2,
        'train.warmup_steps': 10,
    },
}

"""Convert PyTorch checkpoints into iai_jax checkpoints.

  python -m iai_jax.convert --source=iai --input=iai_r50_ytvis19.pth \
      --config=configs/ytvis19.py --output=weights/iai_r50_ytvis19
  python -m iai_jax.convert --source=condinst --input=condinst_r50_coco.pth \
      --config=configs/ytvis19.py --skip_mismatched_heads --output=weights/coco
  python -m iai_jax.convert --source=torchvision-resnet \
      --input=resnet50-0676ba61.pth --config=configs/ytvis19.py \
      --output=weights/imagenet_r50

Sources:

* ``iai``: the authors' MMDetection checkpoints (``{'state_dict': ...,
  'meta': ...}``) -> the whole model;
* ``condinst``: a COCO CondInst checkpoint with the image-model subset of the
  same key names -> backbone, FPN, heads and mask branch; the ID head
  (``bbox_head.id_convs``, ``bbox_head.conv_id``), the ID bank and the
  association block are not in it and keep their fresh initialisation;
* ``torchvision-resnet``: a torchvision ResNet-18/34/50/101 ImageNet state
  dict -> the backbone (its ``fc`` classifier is dropped).

Every key is accounted for: a key the model has no place for, a key the model
needs that is not there, or a shape that does not fit stops the conversion
with the full list. BatchNorm ``num_batches_tracked`` counters (and the
torchvision ``fc``) are dropped on purpose. With ``--skip_mismatched_heads``
the class / ID heads whose size differs (``bbox_head.conv_cls``,
``bbox_head.conv_id``, ``lstt.patch_wise_id_bank``: fine-tuning on a dataset
with other classes or another number of ID slots) are left out and keep their
fresh initialisation instead.

The file is read with ``torch.load(..., weights_only=True)``: tensors and
plain containers only, no code from the file is run. torch is needed only
here (``pip install torch==2.13.0`` gives the CPU build).

Layouts: torch conv (out, in/groups, kh, kw) -> flax (kh, kw, in/groups,
out), grouped and depthwise convs included; linear (out, in) -> (in, out);
BatchNorm weight/bias -> params scale/bias, running_mean/var -> batch_stats
mean/var; GroupNorm / LayerNorm weight/bias -> scale/bias; GCT (1, C, 1, 1)
-> (C,); the local attention's grouped 1x1 relative-bias conv (heads*225,
dh, 1, 1) -> rel_kernel (heads, dh, 225) and its bias -> rel_bias (heads,
225); V_bias (1, heads, dh, 225, 1) -> value_bias (heads, dh, 225); the five
per-level ``scales.i.scale`` scalars -> head/scales (5,).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Any, Mapping

import numpy as np

from iai_jax import checkpoints
from iai_jax.models import backbones

SOURCES = ('iai', 'condinst', 'torchvision-resnet')

# torch modules whose size follows the class / ID count of the dataset
HEAD_MODULES = {
    'bbox_head.conv_cls': 'class count (model.num_classes)',
    'bbox_head.conv_id': 'ID slots (model.max_obj_num)',
    'lstt.patch_wise_id_bank': 'ID slots + 1 (model.max_obj_num)',
}

# What each source holds, as prefixes of our variable paths (no collection).
_CONDINST_FRESH = ('association', 'head/id_convs_', 'head/conv_id')


class ConversionError(ValueError):
  """The state dict does not fit the model (or cannot be read)."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """One torch tensor <-> (part of) one Flax variable."""
  key: str                 # torch key (without the source's prefix)
  path: tuple[str, ...]    # ('params', 'backbone', 'conv1', 'kernel')
  layout: str              # see _to_flax
  module: str              # torch module name (key without the last part)
  index: int | None = None  # 'scale': element of the (levels,) vector


# ----------------------------------------------------------------- layouts
def _to_flax(layout: str, x: np.ndarray, flax_shape: tuple[int, ...]
             ) -> np.ndarray:
  if layout == 'conv':      # (out, in/g, kh, kw) -> (kh, kw, in/g, out)
    y = x.transpose(2, 3, 1, 0)
  elif layout == 'linear':  # (out, in) -> (in, out)
    y = x.T
  elif layout == 'rel_kernel':  # (heads*win, dh, 1, 1) -> (heads, dh, win)
    heads, dh, win = flax_shape
    y = x.reshape(heads, win, dh).transpose(0, 2, 1)
  elif layout in ('vector', 'gct', 'rel_bias', 'value_bias', 'scale'):
    y = x.reshape(flax_shape)
  else:
    raise ValueError(f'unknown layout {layout!r}')
  return np.ascontiguousarray(y, dtype=np.float32)


def _to_torch(layout: str, y: np.ndarray) -> np.ndarray:
  y = np.asarray(y, np.float32)
  if layout == 'conv':
    x = y.transpose(3, 2, 0, 1)
  elif layout == 'linear':
    x = y.T
  elif layout == 'rel_kernel':
    heads, dh, win = y.shape
    x = y.transpose(0, 2, 1).reshape(heads * win, dh, 1, 1)
  elif layout in ('vector', 'rel_bias'):
    x = y.reshape(-1)
  elif layout == 'gct':
    x = y.reshape(1, -1, 1, 1)
  elif layout == 'value_bias':
    x = y.reshape((1,) + y.shape + (1,))
  elif layout == 'scale':
    x = y.reshape(())
  else:
    raise ValueError(f'unknown layout {layout!r}')
  return np.array(x, order='C')  # (ascontiguousarray would make () -> (1,))


def torch_shape(layout: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The torch shape of a Flax variable of ``flax_shape``."""
  s = tuple(flax_shape)
  if layout == 'conv':
    return (s[3], s[2], s[0], s[1])
  if layout == 'linear':
    return (s[1], s[0])
  if layout == 'rel_kernel':
    return (s[0] * s[2], s[1], 1, 1)
  if layout in ('vector', 'rel_bias'):
    return (int(np.prod(s)),)
  if layout == 'gct':
    return (1, s[0], 1, 1)
  if layout == 'value_bias':
    return (1,) + s + (1,)
  if layout == 'scale':
    return ()
  raise ValueError(f'unknown layout {layout!r}')


def to_flax(layout: str, x, flax_shape) -> np.ndarray:
  """One torch tensor (numpy) in the Flax layout ``layout`` (public for tests)."""
  return _to_flax(layout, np.asarray(x), tuple(flax_shape))


def to_torch(layout: str, y) -> np.ndarray:
  """Inverse of :func:`to_flax` (public for tests)."""
  return _to_torch(layout, np.asarray(y))


# ----------------------------------------------------------------- names
# LSTT layer: our module name -> the authors' (AOT) module name.
_LSTT = {
    'norm_self': 'norm2', 'self_q': 'self_attn.linear_Q',
    'self_k': 'self_attn.linear_K', 'self_v': 'self_attn.linear_V',
    'self_out': 'self_attn.projection', 'norm_lst': 'norm1',
    'linear_q': 'linear_Q', 'linear_v': 'linear_V',
    'global_out': 'long_term_attn.projection',
    'local_out': 'short_term_attn.fc', 'norm_ffn': 'norm3',
    'linear1': 'linear1', 'linear2': 'linear2', 'ffn_gn': 'activation.gn',
    'ffn_gct': 'activation.GCT', 'ffn_dwconv': 'activation.conv',
}
_LSTT_PARAMS = {  # parameters held directly by the layer
    'rel_kernel': ('short_term_attn.relative_emb.weight', 'rel_kernel'),
    'rel_bias': ('short_term_attn.relative_emb.bias', 'rel_bias'),
    'value_bias': ('short_term_attn.V_bias', 'value_bias'),
}
_LEAF = {'bias': 'bias', 'scale': 'weight', 'mean': 'running_mean',
         'var': 'running_var', 'alpha': 'alpha', 'beta': 'beta',
         'gamma': 'gamma'}


def _module_name(mod: tuple[str, ...], model_cfg) -> str:
  """Our module path (no collection, no leaf) -> the authors' module name."""
  group, rest = mod[0], mod[1:]
  if group == 'backbone':
    return 'backbone.' + backbones.get(model_cfg).torch_module(rest)
  if group == 'association':
    top = rest[0]
    if top == 'encoder_projector':
      return 'encoder_projector'
    if top == 'cls_projector':
      return 'backbone_projector'
    if top == 'id_bank':
      return 'lstt.patch_wise_id_bank'
    if top == 'final_norm':
      last = model_cfg.association.num_layers - 1
      return f'lstt.LSTT.decoder_norms.{last}'
    m = re.fullmatch(r'layers_(\d+)', top)
    if m and len(rest) == 2:
      return f'lstt.LSTT.layers.{m[1]}.{_LSTT[rest[1]]}'
  if group == 'fpn':
    m = re.fullmatch(r'(lateral|output)_(\d+)', rest[0])
    if m:
      kind = 'lateral_convs' if m[1] == 'lateral' else 'fpn_convs'
      return f'neck.{kind}.{m[2]}.conv'
  if group == 'head':
    m = re.fullmatch(r'(cls|id|reg)_convs_(\d+)', rest[0])
    if m:
      return f'bbox_head.{m[1]}_convs.{m[2]}.{rest[1]}'
    return f'bbox_head.{rest[0]}'
  if group == 'mask_branch':
    m = re.fullmatch(r'(refine|tower)_(\d+)_(conv|bn)', rest[0])
    if m:
      seq = 'mask_refine' if m[1] == 'refine' else 'mask_head'
      return f'bbox_head.{seq}.{m[2]}.{0 if m[3] == "conv" else 1}'
    if rest[0] == 'tower_out':
      return f'bbox_head.mask_head.{model_cfg.mask_branch.num_convs}'
  raise ValueError(f'no torch name for {"/".join(mod)}')


def _entries_for(path: tuple[str, ...], shape: tuple[int, ...], model_cfg
                 ) -> list[Entry]:
  """The torch tensor(s) of one Flax variable (authors' naming)."""
  mod, leaf = path[1:-1], path[-1]
  if mod == ('head',) and leaf == 'scales':
    return [Entry(f'bbox_head.scales.{i}.scale', path, 'scale',
                  f'bbox_head.scales.{i}', i) for i in range(shape[0])]
  if mod[0] == 'association' and leaf in _LSTT_PARAMS and len(mod) == 2:
    layer = re.fullmatch(r'layers_(\d+)', mod[1])[1]
    name, layout = _LSTT_PARAMS[leaf]
    key = f'lstt.LSTT.layers.{layer}.{name}'
    return [Entry(key, path, layout, key.rsplit('.', 1)[0])]
  module = _module_name(mod, model_cfg)
  if leaf == 'kernel':
    layout = 'conv' if len(shape) == 4 else 'linear'
    return [Entry(module + '.weight', path, layout, module)]
  layout = 'gct' if leaf in ('alpha', 'beta', 'gamma') else 'vector'
  return [Entry(f'{module}.{_LEAF[leaf]}', path, layout, module)]


def _in_source(path: tuple[str, ...], source: str) -> bool:
  group = path[1]
  if source == 'iai':
    return True
  if source == 'torchvision-resnet':
    return group == 'backbone'
  if source == 'condinst':
    return not _condinst_fresh(path)
  raise ValueError(f'unknown source {source!r}; choose one of {SOURCES}')


def _condinst_fresh(path: tuple[str, ...]) -> bool:
  rest = '/'.join(path[1:])
  return any(rest == p or rest.startswith(p if p.endswith('_') else p + '/')
             for p in _CONDINST_FRESH)


def _strip_prefix(key: str, source: str) -> str:
  """Authors' key -> the source's key."""
  if source == 'torchvision-resnet':
    assert key.startswith('backbone.')
    return key[len('backbone.'):]
  return key


def layout_entries(model_cfg, source: str = 'iai', abstract=None
                   ) -> tuple[list[Entry], dict[tuple[str, ...], tuple]]:
  """Every torch tensor the source provides for the model of ``model_cfg``.

  Returns (entries, {variable path: Flax shape} of all the model's
  variables). Entry keys are in the source's naming.
  """
  if source not in SOURCES:
    raise ConversionError(f'unknown source {source!r}; choose one of '
                          f'{", ".join(SOURCES)}')
  if abstract is None:
    abstract = checkpoints.abstract_for(model_cfg)
  shapes = {p: tuple(x.shape) for p, x in checkpoints.flatten(abstract).items()}
  entries = []
  for path, shape in shapes.items():
    if not _in_source(path, source):
      continue
    for e in _entries_for(path, shape, model_cfg):
      entries.append(dataclasses.replace(
          e, key=_strip_prefix(e.key, source),
          module=_strip_prefix(e.module, source)))
  return entries, shapes


def _ignorable(key: str, entries_by_module: set[str], source: str,
               model_cfg) -> str | None:
  """Why a key with no place in the model may be dropped (None: it may not)."""
  module, _, leaf = key.rpartition('.')
  if leaf == 'num_batches_tracked' and module in entries_by_module:
    return 'BatchNorm counter'
  if source == 'torchvision-resnet' and module == 'fc':
    return 'ImageNet classifier'
  if source == 'iai':
    m = re.fullmatch(r'lstt\.LSTT\.decoder_norms\.(\d+)', module)
    if m and int(m[1]) < model_cfg.association.num_layers - 1:
      return 'intermediate LayerNorm (only the last layer feeds C5\')'
  return None


# ----------------------------------------------------------------- convert
@dataclasses.dataclass
class Report:
  source: str
  converted: int = 0              # torch tensors used
  values: int = 0                 # their element count (incl. BN statistics)
  ignored: dict[str, str] = dataclasses.field(default_factory=dict)
  skipped_heads: list[str] = dataclasses.field(default_factory=list)
  fresh: list[str] = dataclasses.field(default_factory=list)

  def lines(self) -> list[str]:
    out = [f'converted {self.converted} tensors ({self.values:,} '
           f'values) from the {self.source} checkpoint']
    reasons: dict[str, int] = {}
    for why in self.ignored.values():
      reasons[why] = reasons.get(why, 0) + 1
    for why, n in sorted(reasons.items()):
      out.append(f'dropped {n} key(s) on purpose: {why}')
    for s in self.skipped_heads:
      out.append(f'skipped (--skip_mismatched_heads): {s}')
    if self.fresh:
      out.append('not in this checkpoint, keep their fresh initialisation '
                 'when training with --config.init_from: '
                 + ', '.join(self.fresh))
    return out


def _format_errors(missing, leftover, mismatched, skippable,
                   source: str = '') -> str:
  parts = []
  if leftover:
    parts.append(f'{len(leftover)} key(s) with no place in the model: '
                 + ', '.join(leftover))
  if missing:
    parts.append(f'{len(missing)} key(s) the model needs are missing: '
                 + ', '.join(missing))
  if mismatched:
    parts.append(f'{len(mismatched)} shape mismatch(es): ' + ', '.join(
        f'{k} {got} (model: {want})' for k, got, want in mismatched))
  msg = 'the state dict does not fit the model: ' + '; '.join(parts)
  if source == 'condinst' and any(k.startswith(('lstt.', 'encoder_projector.'))
                                  for k in leftover):
    msg += '. It holds an association block: is it an IAI checkpoint (--source=iai)?'
  if source == 'torchvision-resnet' and any(k.startswith('backbone.')
                                            for k in leftover):
    msg += ('. Its keys start with "backbone.": is it a detector checkpoint '
            '(--source=iai or --source=condinst)?')
  if skippable:
    msg += ('. Only heads sized by the dataset differ (' + ', '.join(
        sorted(skippable)) + '): pass --skip_mismatched_heads to leave them '
        'at their fresh initialisation')
  return msg


def convert_state_dict(state_dict: Mapping[str, Any], model_cfg,
                       source: str = 'iai',
                       skip_mismatched_heads: bool = False,
                       abstract=None) -> tuple[dict[str, Any], Report]:
  """Torch-layout arrays (numpy) -> our variables (nested dicts, numpy).

  Args:
    state_dict: {key: array} with the source's key names.
    model_cfg: the ``model`` section of a config (or the full config).
    source: one of :data:`SOURCES`.
    skip_mismatched_heads: leave out the heads in :data:`HEAD_MODULES` whose
      shape differs instead of failing.
  Returns:
    (variables {'params', 'batch_stats'} holding what the source provides,
    report). ``report.fresh`` lists the modules that are not in it.
  Raises:
    ConversionError listing every leftover key, missing key and shape
    mismatch.
  """
  model_cfg = checkpoints.model_config(model_cfg)
  entries, shapes = layout_entries(model_cfg, source, abstract)
  sd = {k: np.asarray(v) for k, v in state_dict.items()}
  report = Report(source)
  modules = {e.module for e in entries}
  wanted = {e.key for e in entries}
  leftover = []
  for k in sorted(set(sd) - wanted):
    why = _ignorable(k, modules, source, model_cfg)
    if why is None:
      leftover.append(k)
    else:
      report.ignored[k] = why
  missing = sorted(e.key for e in entries if e.key not in sd)
  mismatched = []
  for e in entries:
    if e.key not in sd:
      continue
    want = torch_shape(e.layout, shapes[e.path])
    got = tuple(sd[e.key].shape)
    if got != want:
      mismatched.append((e.key, got, want))
  head_of = lambda key: next((h for h in HEAD_MODULES
                              if key.startswith(h + '.')), None)
  bad_heads = {head_of(k) for k, _, _ in mismatched} - {None}
  others = [m for m in mismatched if head_of(m[0]) is None]
  if skip_mismatched_heads and bad_heads:
    for h in sorted(bad_heads):
      sizes = ', '.join(f'{k.rsplit(".", 1)[1]} {got} vs {want}'
                        for k, got, want in mismatched if head_of(k) == h)
      report.skipped_heads.append(f'{h} ({HEAD_MODULES[h]}: {sizes})')
      for e in entries:
        if e.module == h and e.key in sd:
          report.ignored[e.key] = 'mismatched head, kept fresh'
    entries = [e for e in entries if e.module not in bad_heads]
    mismatched = others
  if missing or leftover or mismatched:
    raise ConversionError(_format_errors(
        missing, leftover, mismatched,
        bad_heads if (not skip_mismatched_heads and not others
                      and not missing and not leftover) else (),
        source))
  flat: dict[tuple[str, ...], np.ndarray] = {}
  for e in entries:
    x = sd[e.key]
    if e.layout == 'scale':
      if e.path not in flat:
        flat[e.path] = np.zeros(shapes[e.path], np.float32)
      flat[e.path][e.index] = np.float32(x)
    else:
      flat[e.path] = _to_flax(e.layout, x.astype(np.float32), shapes[e.path])
    report.converted += 1
    report.values += int(x.size)
  report.fresh = checkpoints.collapse_paths(
      [p for p in shapes if p not in flat], shapes)
  variables = checkpoints.unflatten(flat)
  for coll in {p[0] for p in shapes}:
    variables.setdefault(coll, {})
  return variables, report


def export_state_dict(variables: Mapping[str, Any], model_cfg,
                      source: str = 'iai') -> dict[str, np.ndarray]:
  """Our variables -> the source's torch-layout state dict (numpy).

  The inverse of :func:`convert_state_dict` (without the BatchNorm
  ``num_batches_tracked`` counters); used by the tests and to check a
  conversion by converting back.
  """
  model_cfg = checkpoints.model_config(model_cfg)
  entries, _ = layout_entries(model_cfg, source)
  flat = checkpoints.flatten(variables)
  out = {}
  for e in entries:
    if e.path not in flat:
      continue
    y = np.asarray(flat[e.path])
    if e.layout == 'scale':
      y = y[e.index]
    out[e.key] = _to_torch(e.layout, y)
  return out


# ----------------------------------------------------------------- files
def _one_line(e: BaseException, limit: int) -> str:
  """``Type: message`` on one line, cut at ``limit`` characters."""
  text = ' '.join(str(e).split())
  return f'{type(e).__name__}: {text[:limit]}'


def _check_torch_file(path: str) -> None:
  """ConversionError for a file that is no torch.save output at all, or a
  zip archive (torch's format) cut short: torch.load would report them as
  files it refuses to unpickle."""
  import zipfile
  with open(path, 'rb') as f:
    head = f.read(4)
  if head.startswith(b'PK'):
    try:
      zipfile.ZipFile(path).close()
    except (zipfile.BadZipFile, OSError) as e:
      raise ConversionError(
          f'{path} is not a complete PyTorch checkpoint (its zip archive is '
          f'cut short or damaged: {_one_line(e, 200)}): a truncated download '
          'or copy? Fetch the .pth file again') from e
  elif not head.startswith(b'\x80'):  # torch's older format is a pickle
    raise ConversionError(
        f'{path} is not a PyTorch checkpoint (neither a zip archive nor a '
        f'pickle; it starts with {head!r}): pass the .pth file that '
        'torch.save wrote')


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Read a .pth file safely (``weights_only=True``) into numpy arrays.

  Accepts a plain state dict or a checkpoint dict holding ``state_dict``
  (MMDetection) or ``model``; a ``module.`` prefix on every key is removed.
  """
  import pickle
  try:
    import torch
  except ImportError as e:
    raise ConversionError('converting needs PyTorch: pip install '
                          'torch==2.13.0 (the CPU build is enough)') from e
  if not os.path.isfile(path):
    raise ConversionError(f'{path}: no such file')
  if os.path.getsize(path) == 0:
    raise ConversionError(f'{path} is empty (0 bytes): an interrupted '
                          'download or copy? Fetch the file again')
  _check_torch_file(path)
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except (EOFError, KeyError, ValueError, IndexError, OSError) as e:
    raise ConversionError(
        f'{path} is not a complete PyTorch checkpoint ({_one_line(e, 200)}'
        '): a truncated download, or another kind of file? '
        'Fetch the .pth file again') from e
  except (pickle.UnpicklingError, RuntimeError, AttributeError,
          TypeError) as e:
    raise ConversionError(
        f'{path} could not be read with torch.load(weights_only=True): it '
        'holds objects other than tensors and plain containers, or is not a '
        'torch file. Loading it otherwise could run code from the file, so '
        'it is refused; if you trust the file, re-save its state dict in a '
        f'separate environment. ({_one_line(e, 300)})') from e
  sd = obj
  if isinstance(obj, Mapping):
    for k in ('state_dict', 'model'):
      if isinstance(obj.get(k), Mapping):
        sd = obj[k]
        break
  if not isinstance(sd, Mapping) or not sd:
    raise ConversionError(f'{path} holds no state dict (found '
                          f'{type(sd).__name__})')
  keys = list(sd)
  if all(k.startswith('module.') for k in keys):
    sd = {k[len('module.'):]: v for k, v in sd.items()}
  bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
  if bad:
    raise ConversionError(f'{path}: state dict entries that are not tensors: '
                          + ', '.join(sorted(bad)[:20]))
  out = {}
  for k, v in sd.items():
    v = v.detach().cpu()
    if v.is_floating_point() and v.dtype != torch.float32:
      v = v.float()
    out[k] = v.numpy()
  bad = sorted(k for k, v in out.items()
               if v.dtype.kind in 'fc' and not np.isfinite(v).all())
  if bad:
    raise ConversionError(
        f'{path}: {len(bad)} tensors hold NaN or infinite values ('
        + ', '.join(bad[:10]) + (', ...' if len(bad) > 10 else '')
        + '): the file is damaged or comes from a diverged run; convert '
        'another checkpoint')
  return out


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def convert_file(source: str, input_path: str, config, output: str,
                 config_name: str = '', skip_mismatched_heads: bool = False,
                 overwrite: bool = False, log=print,
                 config_overrides: Mapping[str, Any] | None = None) -> Report:
  """Read ``input_path``, convert it for ``config`` and write ``output``."""
  model_cfg = checkpoints.model_config(config)
  checkpoints.check_output(output, overwrite)  # before the slow part
  sd = load_torch_state_dict(input_path)
  variables, report = convert_state_dict(
      sd, model_cfg, source, skip_mismatched_heads=skip_mismatched_heads)
  meta = {
      'source': source,
      'input': os.path.abspath(input_path),
      'input_sha256': _sha256(input_path),
      'config': config_name,
      'config_overrides': {k: repr(v) for k, v in
                           (config_overrides or {}).items()},
      'model': {'depth': model_cfg.backbone.depth,
                'num_classes': model_cfg.num_classes,
                'max_obj_num': model_cfg.max_obj_num,
                'lstt_layers': model_cfg.association.num_layers},
      'converted_tensors': report.converted,
      'converted_values': report.values,
      'fresh': report.fresh,
      'skipped_heads': report.skipped_heads,
      'dropped_keys': sorted(report.ignored),
  }
  checkpoints.save_variables(output, variables, meta, overwrite=overwrite)
  for line in report.lines():
    log(line)
  log(f'wrote {os.path.abspath(output)}')
  return report


# ----------------------------------------------------------------- main
def main(argv=None):
  from absl import app, flags
  from ml_collections import config_flags

  from iai_jax import cli
  flags.DEFINE_enum('source', None, list(SOURCES),
                    'What the input is: the authors\' IAI checkpoint, a COCO '
                    'CondInst checkpoint or a torchvision ResNet.')
  flags.DEFINE_string('input', None, 'The .pth file.')
  flags.DEFINE_string('output', None, 'Directory to write the checkpoint to.')
  flags.DEFINE_bool('skip_mismatched_heads', False,
                    'Leave the class / ID heads whose size differs at their '
                    'fresh initialisation (fine-tuning on another dataset).')
  flags.DEFINE_bool('overwrite', False, 'Replace a checkpoint in --output '
                    '(the new one is written next to it and swapped in at the '
                    'end: an interrupted run keeps the old one).')
  config_flag = cli.define_config_flag()
  flags.mark_flags_as_required(['source', 'input', 'output'])
  FLAGS = flags.FLAGS

  def run(args):
    if len(args) > 1:
      raise app.UsageError(f'unexpected arguments: {" ".join(args[1:])}')
    cli.quiet_logs()
    config = cli.config(config_flag)
    name = config_flags.get_config_filename(FLAGS['config'])
    try:
      convert_file(FLAGS.source, FLAGS.input, config, FLAGS.output,
                   config_name=name,
                   skip_mismatched_heads=FLAGS.skip_mismatched_heads,
                   overwrite=FLAGS.overwrite,
                   config_overrides=config_flags.get_override_values(
                       FLAGS['config']))
    except (ConversionError, FileExistsError, checkpoints.CheckpointError) as e:
      raise SystemExit(f'error: {e}') from None
    except OSError as e:  # e.g. an --output that cannot be written
      raise SystemExit(f'error: cannot write {FLAGS.output}: {e}; choose '
                       'another --output') from None

  cli.run(run, argv=argv)


if __name__ == '__main__':
  main()

"""Checkpoints: the one owner of their layouts on disk.

Two kinds of folders hold model variables:

A training workdir (written by :func:`iai_jax.train.train`)::

  WORKDIR/checkpoints/<step>/state    the TrainState (orbax StandardSave)
  WORKDIR/checkpoints/<step>/data     the data iterator's position (grain)
  WORKDIR/checkpoints/<step>/config   the run's config (JSON)

:func:`manager`, :func:`save` and :func:`restore_for_resume` write and read
it; the last ``train.keep_checkpoints`` steps are kept.

A converted checkpoint (written by ``python -m iai_jax.convert``) is a
directory holding

* ``variables/``: an orbax checkpoint of ``{'params': ..., 'batch_stats':
  ...}``, the Flax variables of :func:`iai_jax.models.build_model` for the
  config it was converted with (numpy float32 arrays);
* ``conversion.json``: where it came from (source, input file, config) and
  ``fresh``: the parts of the model that are *not* in it (e.g. the ID head,
  ID bank and association block of a COCO CondInst checkpoint). They keep
  their fresh initialisation when training starts from the checkpoint.

Nothing here needs torch.

Use::

  variables = checkpoints.restore_variables(config, path)  # any of the three:
      # a workdir (its latest step), one step folder, a converted checkpoint
  variables = checkpoints.init_from(config, variables)     # --config.init_from
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

VARIABLES_DIR = 'variables'
META_FILE = 'conversion.json'
FORMAT_VERSION = 1


ITEMS = ('state', 'data', 'config')  # the items of a workdir's step folder
CHECKPOINTS_DIR = 'checkpoints'


class CheckpointError(ValueError):
  """A checkpoint that cannot be used; the message says why and what to do."""


class CheckpointMismatchError(CheckpointError):
  """The checkpoint's variables do not fit the model of the config."""


class CheckpointDamagedError(CheckpointError):
  """A checkpoint whose files cannot be read (truncated, partly deleted)."""


class ResumeConfigError(CheckpointError):
  """Resuming with model, data or (unless allowed) schedule keys that differ
  from the ones the checkpoint was trained with."""


# Config keys of a training run (see resume_config_problems): these change
# nothing the checkpoint holds and may differ on resume ...
FREE_KEYS = ('infer', 'init_from', 'train.log_every', 'train.checkpoint_every',
             'train.keep_checkpoints', 'train.data_workers', 'train.distributed',
             'train.mesh_shape', 'train.mesh_axes', 'train.scan_unroll',
             'dataset.root', 'dataset.tfds_dir', 'dataset.train_json',
             'dataset.train_frames', 'dataset.val_json', 'dataset.val_frames')
# ... these change the optimisation from the resumed step on, allowed with
# --allow_schedule_change; every other key (model, input, data, batch, clip)
# must stay as it was.
SCHEDULE_KEYS = ('train.steps', 'train.epochs', 'train.lr',
                 'train.warmup_steps', 'train.warmup_factor',
                 'train.decay_epochs', 'train.weight_decay',
                 'train.backbone_lr_mult', 'train.backbone_wd_mult',
                 'train.grad_clip')


# ----------------------------------------------------------------- trees
def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()
            ) -> dict[tuple[str, ...], Any]:
  """Nested dicts -> {path tuple: leaf}."""
  out = {}
  for k, v in tree.items():
    path = prefix + (str(k),)
    if isinstance(v, Mapping):
      out.update(flatten(v, path))
    else:
      out[path] = v
  return out


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  """{path tuple: leaf} -> nested dicts."""
  out: dict[str, Any] = {}
  for path, leaf in flat.items():
    node = out
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = leaf
  return out


def path_str(path: Sequence[str]) -> str:
  return '/'.join(path)


def _has_prefix(path: tuple[str, ...], prefixes: Iterable[str]) -> bool:
  """``path`` (collection first) lies under one of ``prefixes``.

  A prefix names a module with or without its collection: ``association``
  or ``params/association``; ``head/conv_id`` covers kernel and bias.
  """
  full, rest = path_str(path), path_str(path[1:])
  for p in prefixes:
    p = p.strip('/')
    if not p:
      continue
    for s in (full, rest):
      if s == p or s.startswith(p + '/'):
        return True
  return False


def collapse_paths(paths: Iterable[tuple[str, ...]],
                   universe: Iterable[tuple[str, ...]]) -> list[str]:
  """Shortest module prefixes that cover ``paths`` and nothing else of
  ``universe`` (so a missing block reads 'params/association', not its 80
  leaves)."""
  paths = set(paths)
  universe = set(universe) | paths
  out = set()
  for p in paths:
    best = p
    for n in range(1, len(p)):
      pre = p[:n]
      under = [u for u in universe if u[:n] == pre]
      if all(u in paths for u in under):
        best = pre
        break
    out.add(path_str(best))
  return sorted(out)


def model_config(config):
  """The ``model`` section of a full config, or the model config itself."""
  if 'model' in config and 'backbone' not in config:
    return config.model
  return config


def abstract_for(config):
  """Shapes/dtypes of the variables of the config's model (no allocation)."""
  from iai_jax import models
  model = models.build_model(model_config(config))
  return models.abstract_variables(model)


# ----------------------------------------------------------------- checks
def check_variables(tree: Mapping[str, Any], abstract: Mapping[str, Any],
                    partial: bool = False) -> list[str]:
  """Mismatches of ``tree`` against ``abstract``, as readable lines.

  Every leaf of ``tree`` must exist in ``abstract`` with the same shape;
  unless ``partial``, every leaf of ``abstract`` must exist in ``tree``.
  """
  got = {p: tuple(np.shape(x)) for p, x in flatten(tree).items()}
  want = {p: tuple(x.shape) for p, x in flatten(abstract).items()}
  problems = []
  unknown = sorted(set(got) - set(want))
  if unknown:
    problems.append('not in the model: ' + ', '.join(
        collapse_paths(unknown, got)))
  if not partial:
    missing = sorted(set(want) - set(got))
    if missing:
      problems.append('missing: ' + ', '.join(collapse_paths(missing, want)))
  shapes = [f'{path_str(p)} {got[p]} (model: {want[p]})'
            for p in sorted(set(got) & set(want)) if got[p] != want[p]]
  if shapes:
    problems.append('shape mismatch: ' + ', '.join(shapes))
  return problems


# ----------------------------------------------------------------- files
def check_output(path: str, overwrite: bool) -> None:
  """Refuse an output folder that holds a checkpoint (unless ``overwrite``)
  or anything else; called before the conversion does any work."""
  path = os.path.abspath(path)
  if os.path.lexists(path) and not os.path.isdir(path):
    raise FileExistsError(f'{path} is a file; choose a folder for --output')
  if not os.path.isdir(path):
    return
  present = sorted(os.listdir(path))
  ours = {VARIABLES_DIR, META_FILE}
  if present and not overwrite:
    raise FileExistsError(
        f'{path} already holds ' + ('a checkpoint' if ours & set(present)
                                    else 'files') + '; choose another '
        '--output or pass --overwrite to replace it')
  others = [n for n in present if n not in ours]
  if others:
    raise FileExistsError(
        f'{path} holds files that are not part of a converted checkpoint '
        f'({", ".join(others[:5])}); --overwrite replaces the folder as a '
        'whole, so choose an empty or new --output')


def save_variables(path: str, variables: Mapping[str, Any],
                   meta: Mapping[str, Any], overwrite: bool = False) -> None:
  """Write ``variables`` (nested dicts of arrays) and ``meta`` to ``path``.

  Everything is written to a staging folder next to ``path`` that then
  replaces it as a whole: an interrupted conversion leaves the previous
  checkpoint as it was.
  """
  import orbax.checkpoint as ocp

  from iai_jax import atomic
  path = os.path.abspath(path)
  check_output(path, overwrite)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tree = {coll: unflatten({p: np.asarray(x) for p, x in flatten(sub).items()})
          for coll, sub in variables.items()}
  with atomic.staged_dir(path) as stage:
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(stage, VARIABLES_DIR), tree)
    ckptr.wait_until_finished()
    atomic.write_text(os.path.join(stage, META_FILE),
                      json.dumps(dict(meta, format=FORMAT_VERSION),
                                 indent=2) + '\n')


def read_meta(path: str) -> dict[str, Any]:
  """The ``conversion.json`` of a converted checkpoint ({} if absent)."""
  meta_file = os.path.join(path, META_FILE)
  if not os.path.exists(meta_file):
    return {}
  try:
    with open(meta_file) as f:
      meta = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointDamagedError(
        f'{meta_file} does not read ({e}); convert the checkpoint again '
        'with python -m iai_jax.convert --overwrite') from e
  if not isinstance(meta, dict):
    raise CheckpointDamagedError(f'{meta_file} is not a JSON object; convert '
                                 'the checkpoint again')
  return meta


def _variables_dir(path: str) -> str:
  path = os.path.abspath(path)
  var_dir = os.path.join(path, VARIABLES_DIR)
  if os.path.isdir(var_dir):
    return var_dir
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    raise CheckpointMismatchError(
        f'{path} is a training workdir, not a converted checkpoint: pass it '
        'to --checkpoint for eval/predict; to train from converted weights '
        'pass a folder written by python -m iai_jax.convert')
  raise CheckpointError(
      f'{path} is not a converted checkpoint (no {VARIABLES_DIR}/ in it); '
      'write one with python -m iai_jax.convert --output=DIR')


def _read_tree(var_dir: str) -> dict[str, Any]:
  import orbax.checkpoint as ocp
  ckptr = ocp.StandardCheckpointer()
  try:
    tree = ckptr.restore(var_dir)
  except Exception as e:  # orbax / tensorstore raise many types
    raise CheckpointDamagedError(
        f'{var_dir} does not load, its files are damaged or incomplete '
        f'({_short(e)}); convert the checkpoint again with python -m '
        'iai_jax.convert --overwrite') from e
  if not isinstance(tree, Mapping):
    raise CheckpointDamagedError(f'{var_dir} holds no variables; convert the '
                                 'checkpoint again')
  return {coll: unflatten({p: np.asarray(x) for p, x in flatten(sub).items()})
          for coll, sub in tree.items()}


def load_variables(path: str, config, partial: bool = False
                   ) -> dict[str, Any]:
  """Restore a converted checkpoint and check it against the config's model.

  Args:
    path: a directory written by ``python -m iai_jax.convert``.
    config: the full config, or its ``model`` section.
    partial: accept a checkpoint that holds only part of the model (e.g. a
      COCO CondInst or ImageNet ResNet conversion); what it holds must still
      fit. Without it every variable of the model must be there.
  Returns:
    {'params': ..., 'batch_stats': ...} nested dicts of numpy arrays, in the
    dtypes of the model's variables.
  Raises:
    CheckpointMismatchError: "checkpoint does not fit the config: ..." with
      the missing, unknown and wrongly shaped variables.
  """
  var_dir = _variables_dir(path)
  tree = _read_tree(var_dir)
  abstract = abstract_for(config)
  problems = check_variables(tree, abstract, partial=partial)
  if problems:
    meta = read_meta(path)
    hint = ''
    if meta.get('fresh') and not partial:
      hint = (f' (it was converted from a {meta.get("source")!r} checkpoint '
              'and holds only part of the model: train from it with '
              f'--config.init_from={path})')
    elif meta.get('config'):
      hint = (f' (it was converted with --config={meta["config"]}; convert '
              'again with this config, and --skip_mismatched_heads if only '
              'the class or ID count differs)')
    raise CheckpointMismatchError(
        f'checkpoint {path} does not fit the config: '
        + '; '.join(problems) + hint)
  flat_abs = flatten(abstract)
  flat = {p: np.asarray(x, dtype=flat_abs[p].dtype)
          for p, x in flatten(tree).items()}
  out = unflatten(flat)
  for coll in abstract:
    out.setdefault(coll, {})
  return out


# ----------------------------------------------------------------- init
def merge_init(fresh: Mapping[str, Any], loaded: Mapping[str, Any],
               allow_missing_prefixes: Iterable[str] = ()
               ) -> tuple[dict[str, Any], list[str]]:
  """Take ``loaded`` where it has a variable, ``fresh`` elsewhere.

  Args:
    fresh: the complete, freshly initialised variables.
    loaded: (part of) the same tree, e.g. from :func:`load_variables`.
    allow_missing_prefixes: modules ('association', 'head/conv_id' or
      'params/association') that may be absent from ``loaded``; they keep
      their fresh initialisation.
  Returns:
    (merged variables with the structure of ``fresh``, the module prefixes
    that kept their fresh initialisation).
  Raises:
    CheckpointMismatchError: a variable of ``loaded`` is unknown or has the
      wrong shape, or one outside ``allow_missing_prefixes`` is missing.
  """
  allow = list(allow_missing_prefixes)
  flat_fresh = flatten(fresh)
  flat_loaded = flatten(loaded)
  problems = check_variables(loaded, fresh, partial=True)
  missing = [p for p in flat_fresh
             if p not in flat_loaded and not _has_prefix(p, allow)]
  if missing:
    problems.append('missing: ' + ', '.join(collapse_paths(missing, flat_fresh)))
  if problems:
    raise CheckpointMismatchError('checkpoint does not fit the config: '
                                  + '; '.join(problems))
  merged, kept = {}, []
  for p, x in flat_fresh.items():
    if p in flat_loaded:
      merged[p] = np.asarray(flat_loaded[p], dtype=x.dtype)
    else:
      merged[p] = x
      kept.append(p)
  return unflatten(merged), collapse_paths(kept, flat_fresh)


def init_from(config, variables: Mapping[str, Any],
              log: Callable[[str], Any] = print,
              path: str | None = None) -> dict[str, Any]:
  """``--config.init_from=DIR``: start training from a converted checkpoint.

  Args:
    config: the full config (its ``init_from`` names the checkpoint unless
      ``path`` is given).
    variables: the freshly initialised {'params', 'batch_stats'}.
    log: where the one-line summary goes.
  Returns:
    ``variables`` with every variable the checkpoint holds replaced by the
    checkpoint's; the parts the checkpoint leaves out on purpose (its
    ``fresh`` list, e.g. the ID head, ID bank and association block of a COCO
    CondInst checkpoint) keep their fresh initialisation, and ``log`` says so.
    Unchanged when there is nothing to load.
  """
  path = path if path is not None else config.get('init_from', '')
  if not path:
    return dict(variables)
  meta = read_meta(path)
  loaded = load_variables(path, config, partial=True)
  merged, kept = merge_init(variables, loaded,
                            allow_missing_prefixes=meta.get('fresh', ()))
  n = len(flatten(loaded))
  what = f'{meta.get("source", "?")} checkpoint {meta.get("input", "")}'.strip()
  msg = f'init_from {path}: {n} arrays from the {what}'
  if kept:
    msg += '; kept their fresh initialisation: ' + ', '.join(kept)
  log(msg)
  return merged


# ----------------------------------------------------------------- workdirs
def manager(workdir: str, keep: int | None = None):
  """The orbax CheckpointManager of ``workdir/checkpoints``."""
  import orbax.checkpoint as ocp
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, cleanup_tmp_directories=True,
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, CHECKPOINTS_DIR)),
      options=options, item_names=ITEMS)


def save(mgr, step: int, state, data_iter, config) -> None:
  """Save the train state, the data iterator's position and the config."""
  import grain
  import orbax.checkpoint as ocp
  mgr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iter),
      config=ocp.args.JsonSave(json.loads(config.to_json()))))


def _short(e: BaseException, limit: int = 300) -> str:
  """An exception as one short line."""
  text = ' '.join(str(e).split()) or type(e).__name__
  if len(text) > limit:
    text = text[:limit] + '...'
  return f'{type(e).__name__}: {text}'


def flat_config(config) -> dict[str, Any]:
  """A config (ConfigDict or its JSON dict) as {dotted key: JSON value}."""
  if not isinstance(config, Mapping) or hasattr(config, 'to_json'):
    config = json.loads(config.to_json())
  out = {}
  for path, value in flatten(config).items():
    out['.'.join(path)] = value
  return out


def _under(key: str, prefixes: Iterable[str]) -> bool:
  return any(key == p or key.startswith(p + '.') for p in prefixes)


def config_changes(saved: Mapping[str, Any], current
                   ) -> tuple[list[str], list[str]]:
  """(schedule changes, other changes) from ``saved`` (a checkpoint's config
  JSON) to ``current``, as 'key: old -> new' lines; FREE_KEYS are left out."""
  old, new = flat_config(saved), flat_config(current)
  schedule, other = [], []
  for key in sorted(set(old) | set(new)):
    if _under(key, FREE_KEYS):
      continue
    a, b = old.get(key, '<absent>'), new.get(key, '<absent>')
    if a == b:
      continue
    line = f'{key}: {a!r} -> {b!r}'
    (schedule if _under(key, SCHEDULE_KEYS) else other).append(line)
  return schedule, other


def check_resume_config(saved: Mapping[str, Any], config, where: str,
                        allow_schedule_change: bool = False,
                        log: Callable[[str], Any] = print) -> None:
  """ResumeConfigError when ``config`` changes model or data keys of the run
  saved in ``where``, or schedule keys without ``allow_schedule_change``."""
  schedule, other = config_changes(saved, config)
  if other:
    raise ResumeConfigError(
        f'{where} was trained with other model or data settings: '
        + '; '.join(other) + '. A resumed run keeps them: pass the values it '
        'was trained with, or train into a new --workdir')
  if schedule and not allow_schedule_change:
    raise ResumeConfigError(
        f'{where} was trained with another schedule: ' + '; '.join(schedule)
        + '. Pass the values it was trained with, or --allow_schedule_change '
        'to continue with the new schedule on purpose')
  if schedule:
    log('resuming with a changed schedule (--allow_schedule_change): '
        + '; '.join(schedule))


def saved_config(mgr, step: int) -> dict[str, Any]:
  """The config saved with a workdir checkpoint (JSON dict)."""
  import orbax.checkpoint as ocp
  restored = mgr.restore(step, args=ocp.args.Composite(
      config=ocp.args.JsonRestore()))
  if not isinstance(restored.config, Mapping):
    raise ValueError('the saved config is not a JSON object')
  return dict(restored.config)


def set_aside(mgr, step: int) -> str:
  """Move a broken step folder out of the way (never delete it):
  WORKDIR/checkpoints/<step> -> WORKDIR/broken_checkpoints/<step>[-n]."""
  src = os.path.join(str(mgr.directory), str(step))
  dest_dir = os.path.join(os.path.dirname(str(mgr.directory)),
                          'broken_checkpoints')
  os.makedirs(dest_dir, exist_ok=True)
  dest, n = os.path.join(dest_dir, str(step)), 1
  while os.path.lexists(dest):
    dest, n = os.path.join(dest_dir, f'{step}-{n}'), n + 1
  os.rename(src, dest)
  mgr.reload()
  return dest


def newest_config(workdir: str) -> tuple[dict[str, Any], str] | None:
  """(config, step folder) of the newest checkpoint of ``workdir`` whose
  config reads; None when it has none."""
  import orbax.checkpoint as ocp
  ckpt_dir = os.path.abspath(os.path.join(workdir, CHECKPOINTS_DIR))
  if not os.path.isdir(ckpt_dir):
    return None
  mgr = ocp.CheckpointManager(ckpt_dir, item_names=ITEMS)
  try:
    for step in sorted(mgr.all_steps(), reverse=True):
      try:
        return saved_config(mgr, step), os.path.join(ckpt_dir, str(step))
      except Exception:  # a damaged one: resume falls back past it
        continue
  finally:
    mgr.close()
  return None


def check_workdir_config(config, workdir: str,
                         allow_schedule_change: bool = False,
                         log: Callable[[str], Any] = print) -> None:
  """Before any work: ResumeConfigError when ``workdir`` holds a run that
  ``config`` cannot resume (see :func:`check_resume_config`)."""
  found = newest_config(workdir)
  if found is not None:
    check_resume_config(found[0], config, f'checkpoint {found[1]}',
                        allow_schedule_change, log=lambda *_: None)


def restore_for_resume(mgr, abstract_state, data_iter, config=None,
                       allow_schedule_change: bool = False,
                       log: Callable[[str], Any] = print):
  """(state, step) of the newest checkpoint that loads, the iterator moved
  to its position; (None, 0) when the workdir has none.

  ``abstract_state``: ShapeDtypeStructs (with shardings) of the state.
  A checkpoint that does not load is moved to ``broken_checkpoints/`` with a
  warning that names it, and the previous one is tried. With ``config`` the
  config saved with the checkpoint must match it
  (:func:`check_resume_config`).
  """
  import grain
  import orbax.checkpoint as ocp
  broken = []
  for step in sorted(mgr.all_steps(), reverse=True):
    where = os.path.join(str(mgr.directory), str(step))
    try:
      saved = saved_config(mgr, step)
    except Exception as e:  # orbax / tensorstore raise many types
      broken.append((step, e))
    else:
      if config is not None:
        check_resume_config(saved, config, f'checkpoint {where}',
                            allow_schedule_change, log)
      try:
        restored = mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iter)))
        return restored.state, step
      except Exception as e:
        broken.append((step, e))
    step, e = broken[-1]
    dest = set_aside(mgr, step)
    log(f'warning: checkpoint {where} does not load ({_short(e)}); moved it '
        f'to {dest}; trying the previous checkpoint')
  if broken:
    raise CheckpointDamagedError(
        f'no checkpoint in {mgr.directory} loads (the broken ones are in '
        f'{os.path.join(os.path.dirname(str(mgr.directory)), "broken_checkpoints")}'
        '); train from scratch in a new --workdir')
  return None, 0


def _workdir_step(path: str) -> tuple[str, int | None] | None:
  """(checkpoints dir, step or None for the latest) if ``path`` is a
  training workdir or one of its step folders, else None."""
  if os.path.isdir(os.path.join(path, CHECKPOINTS_DIR)):
    return os.path.join(path, CHECKPOINTS_DIR), None
  if (os.path.isdir(os.path.join(path, 'state'))
      and os.path.basename(path).isdigit()):
    return os.path.dirname(path), int(os.path.basename(path))
  return None


def _model_changes(saved: Mapping[str, Any], config) -> list[str]:
  old = {k: v for k, v in flat_config(saved).items() if k.startswith('model.')}
  new = {k: v for k, v in flat_config(config).items() if k.startswith('model.')}
  return [f'{k}: {old.get(k, "<absent>")!r} -> {new.get(k, "<absent>")!r}'
          for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def restore_variables(config, path: str, log=print) -> dict[str, Any]:
  """Model variables {'params', 'batch_stats'} (numpy) from ``path``.

  ``path`` may be a training workdir (its newest checkpoint that loads; a
  broken newer one is skipped with a warning), one step folder of it
  (``WORKDIR/checkpoints/<step>``), or a directory written by ``python -m
  iai_jax.convert``.
  """
  import jax
  import orbax.checkpoint as ocp

  from iai_jax import train_state
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise CheckpointError(
        f'checkpoint {path} does not exist. Pass a training workdir, one of '
        'its checkpoints/<step> folders, or a folder written by python -m '
        'iai_jax.convert.')
  found = _workdir_step(path)
  if found is None:
    return load_variables(path, config)
  ckpt_dir, step = found
  mgr = ocp.CheckpointManager(ckpt_dir, item_names=ITEMS)
  steps = sorted(mgr.all_steps(), reverse=True) if step is None else [step]
  if not steps:
    raise CheckpointError(f'{ckpt_dir} holds no complete checkpoint yet')
  abstract = train_state.abstract_train_state(config)
  failures = []
  for s in steps:
    where = os.path.join(ckpt_dir, str(s))
    try:
      saved = saved_config(mgr, s)
    except Exception:  # judged by the state below
      saved = None
    if saved is not None:
      changes = _model_changes(saved, config)
      if changes:
        raise CheckpointMismatchError(
            f'checkpoint {where} was trained with other model settings: '
            + '; '.join(changes) + '. Pass the --config (and --config.model.* '
            'overrides) it was trained with')
    try:
      restored = mgr.restore(s, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))
    except Exception as e:  # orbax / tensorstore raise many types
      failures.append(where)
      if step is not None:
        raise CheckpointDamagedError(
            f'checkpoint {where} does not load, its files are damaged or '
            f'incomplete ({_short(e)}); pass the workdir to use its newest '
            'checkpoint that loads, or another step folder') from e
      log(f'warning: checkpoint {where} does not load ({_short(e)}); '
          'trying the previous checkpoint')
      continue
    log(f'restored step {s} from {ckpt_dir}')
    return jax.device_get(restored.state.variables())
  raise CheckpointDamagedError(
      f'no checkpoint in {ckpt_dir} loads ({", ".join(failures)}); train '
      'again or pass another checkpoint')

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
def save_variables(path: str, variables: Mapping[str, Any],
                   meta: Mapping[str, Any], overwrite: bool = False) -> None:
  """Write ``variables`` (nested dicts of arrays) and ``meta`` to ``path``."""
  import shutil

  import orbax.checkpoint as ocp
  path = os.path.abspath(path)
  var_dir = os.path.join(path, VARIABLES_DIR)
  meta_file = os.path.join(path, META_FILE)
  if os.path.exists(var_dir) or os.path.exists(meta_file):
    if not overwrite:
      raise FileExistsError(f'{path} already holds a checkpoint; choose '
                            'another --output or pass --overwrite')
    shutil.rmtree(var_dir, ignore_errors=True)
    if os.path.exists(meta_file):
      os.remove(meta_file)
  os.makedirs(path, exist_ok=True)
  tree = {coll: unflatten({p: np.asarray(x) for p, x in flatten(sub).items()})
          for coll, sub in variables.items()}
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(var_dir, tree)
  ckptr.wait_until_finished()
  with open(meta_file, 'w') as f:
    json.dump(dict(meta, format=FORMAT_VERSION), f, indent=2)
    f.write('\n')


def read_meta(path: str) -> dict[str, Any]:
  """The ``conversion.json`` of a converted checkpoint ({} if absent)."""
  meta_file = os.path.join(path, META_FILE)
  if not os.path.exists(meta_file):
    return {}
  with open(meta_file) as f:
    return json.load(f)


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
  tree = ckptr.restore(var_dir)
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


def restore_for_resume(mgr, abstract_state, data_iter):
  """(state, step) of the latest checkpoint, the iterator moved to its
  position; (None, 0) when the workdir has none.

  ``abstract_state``: ShapeDtypeStructs (with shardings) of the state.
  """
  import grain
  import orbax.checkpoint as ocp
  step = mgr.latest_step()
  if step is None:
    return None, 0
  restored = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(data_iter)))
  return restored.state, step


def _workdir_step(path: str) -> tuple[str, int | None] | None:
  """(checkpoints dir, step or None for the latest) if ``path`` is a
  training workdir or one of its step folders, else None."""
  if os.path.isdir(os.path.join(path, CHECKPOINTS_DIR)):
    return os.path.join(path, CHECKPOINTS_DIR), None
  if (os.path.isdir(os.path.join(path, 'state'))
      and os.path.basename(path).isdigit()):
    return os.path.dirname(path), int(os.path.basename(path))
  return None


def restore_variables(config, path: str, log=print) -> dict[str, Any]:
  """Model variables {'params', 'batch_stats'} (numpy) from ``path``.

  ``path`` may be a training workdir (its latest checkpoint is used), one
  step folder of it (``WORKDIR/checkpoints/<step>``), or a directory written
  by ``python -m iai_jax.convert``.
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
  step = mgr.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f'{ckpt_dir} holds no complete checkpoint yet')
  abstract = train_state.abstract_train_state(config)
  try:
    restored = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointMismatchError(
        f'the checkpoint {ckpt_dir}/{step} does not fit the config (model '
        f'size, classes or ID slots differ?): {str(e)[:800]}') from e
  log(f'restored step {step} from {ckpt_dir}')
  return jax.device_get(restored.state.variables())

"""The ablations of the paper's Table 4 on the synthetic dataset, one command.

  python scripts/ablate.py                       # every variant, both splits
  python scripts/ablate.py --steps=500 --variants=full,no_assoc,tbd

Each variant is trained with the same budget (``train.steps`` of the config,
or ``--steps``) on each split's training videos, and evaluated online on the
split's held-out videos:

  full       IAI (global + local memory, ID head)
  no_assoc   without the association module: both memory branches off
             (each frame alone; IDs still predicted by the ID head)
  no_global  without the global (long-term) memory
  no_local   without the local (short-term) memory
  tbd        tracking-by-detection: the no_assoc model, IDs from mask IoU
             with the previous frame (infer.tracker='mask_iou'); not trained,
             it reuses no_assoc's checkpoint
  tbd_iai    tracking-by-detection on full IAI's network (same detections,
             IDs from mask IoU instead of the ID head): the association
             alone compared; not trained, it reuses full's checkpoint

Splits: ``synthetic`` (configs/synthetic.py) and ``occluded``
(configs/synthetic.py:occluded, the occlusion-heavy one); each split has its
own dataset, generated under data/ when missing.

Runs go to WORKDIR/<split>/<variant> (checkpoints, logs, eval_heldout/);
compiled programs are kept in WORKDIR/xla_cache (the second split and
reruns load them instead of compiling again). A
variant whose last checkpoint is the end of the budget is not trained again,
and one interrupted half-way resumes from its last checkpoint; a finished
variant's metrics are cached in WORKDIR/<split>/<variant>/ablation.json
(``--reeval`` runs the evaluation again). The table (AP, AP50, AP75, AR1,
AR10 in %) is printed and written to ``--out`` (default WORKDIR/ablation.md),
the numbers also to the same path with .json.

``--train_on=reid`` trains every variant once on the re-identification
split and evaluates it on every split. The recipe fine-tunes IAI from a
trained detector (CondInst on COCO); here the variants can share a start
with ``--set init_from=DIR``, a folder written by
``scripts/detector_init.py`` from a synthetic run: its detector only, or
with ``--whole`` the whole trained IAI. The records in BENCHMARKS.md:

  python scripts/detector_init.py --whole --run=runs/synthetic \
      --output=runs/synthetic_whole
  python scripts/ablate.py --workdir=runs/ablate_reid --train_on=reid \
      --steps=600 --set model.max_obj_num=10 \
      --set model.association.global_slots=16 \
      --set init_from=runs/synthetic_whole \
      --splits=reid --variants=full,no_global,tbd_iai

(the reid config's 8-frame clips; the first table, with 3-frame clips on
all three splits and every variant, adds ``--set train.clip_len=3`` and
drops ``--splits`` and ``--variants``).

``--steps`` changes the budget of every variant; the learning-rate decay
epochs are scaled with it (so the decays stay at the same fraction of the
budget) and the warm-up is cut to a tenth of the budget when it is longer.
``--set KEY=VALUE`` overrides any config key for every run (repeatable), and
``--data_root DIR`` puts each split's dataset under DIR/<dataset name>, e.g.
for a quick smoke run on a small dataset:

  python scripts/ablate.py --workdir=/tmp/ablate --data_root=/tmp/ablate/data \
      --steps=2 --set dataset.synthetic.num_videos=10 \
      --set dataset.synthetic.num_frames=4
"""

from __future__ import annotations

import ast
import json
import os
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# variant -> (use_global_memory, use_local_memory, tracker, trained run)
VARIANTS = {
    'full': (True, True, 'id_head', 'full'),
    'no_assoc': (False, False, 'id_head', 'no_assoc'),
    'no_global': (False, True, 'id_head', 'no_global'),
    'no_local': (True, False, 'id_head', 'no_local'),
    'tbd': (False, False, 'mask_iou', 'no_assoc'),
    'tbd_iai': (True, True, 'mask_iou', 'full'),
}
TITLES = {
    'full': 'IAI (full)',
    'no_assoc': 'w/o association (no memory)',
    'no_global': 'w/o global memory',
    'no_local': 'w/o local memory',
    'tbd': 'tracking-by-detection (mask IoU)',
    'tbd_iai': 'tracking-by-detection on full IAI\'s detections',
}
SPLITS = {
    'synthetic': 'configs/synthetic.py',
    'occluded': 'configs/synthetic.py:occluded',
    'reid': 'configs/synthetic.py:reid',
}
# AP and the association metrics (HOTA's AssA, IDF1, ID switches)
METRICS = ('AP', 'HOTA', 'AssA', 'IDF1', 'IDSW')
COUNTS = ('IDSW',)  # shown as counts, not in %


def log(msg: str) -> None:
  print(f'[ablate {time.strftime("%H:%M:%S")}] {msg}', flush=True)


def parse_value(text: str):
  if text.lower() in ('true', 'false'):
    return text.lower() == 'true'
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def load_config(spec: str, sets=()):
  """A config file[:variants] of this repository (dataset root made
  absolute) with ``KEY=VALUE`` overrides applied; returned unlocked-able."""
  from iai_jax import config_lib
  path, _, arg = spec.partition(':')
  config = config_lib.load_config_file(os.path.join(ROOT, path)
                                       + (f':{arg}' if arg else ''))
  with config.unlocked():
    if not os.path.isabs(config.dataset.root):
      config.dataset.root = os.path.join(ROOT, config.dataset.root)
    for item in sets:
      key, sep, value = item.partition('=')
      if not sep:
        raise SystemExit(f'error: --set expects KEY=VALUE, got {item!r}')
      value = parse_value(value.strip())
      if isinstance(value, list):
        value = tuple(value)
      try:
        config_lib.set_value(config, key.strip(), value)
      except (ValueError, TypeError, KeyError) as e:
        raise SystemExit(f'error: --set {item}: {e}') from e
  return config


def split_config(split: str, args):
  """The split's config with --set, --data_root and --steps applied."""
  config = load_config(SPLITS[split], args.set)
  with config.unlocked():
    if args.data_root:
      config.dataset.root = os.path.join(os.path.abspath(args.data_root),
                                         config.dataset.name)
    t = config.train
    if args.steps:
      base = t.steps
      t.steps = args.steps
      if base:
        t.decay_epochs = tuple(e * args.steps / base for e in t.decay_epochs)
      t.warmup_steps = min(t.warmup_steps, max(1, args.steps // 10))
    if not t.steps:
      raise SystemExit('error: the config has train.steps=0 (epochs); pass '
                       '--steps so that every variant gets the same budget')
  config.lock()
  return config


def variant_config(config, variant: str):
  g, l, tracker, _ = VARIANTS[variant]
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.model.association.use_global_memory = g
    c.model.association.use_local_memory = l
    c.infer.tracker = tracker
  c.lock()
  return c


def latest_step(workdir: str) -> int | None:
  from iai_jax import checkpoints
  if not os.path.isdir(os.path.join(workdir, checkpoints.CHECKPOINTS_DIR)):
    return None
  manager = checkpoints.manager(workdir)
  step = manager.latest_step()
  manager.close()
  return step


def trained_variables(config, workdir: str, cache: dict):
  """Trains (or resumes, or skips when finished) one run; its variables."""
  import jax

  from iai_jax import checkpoints, train
  if workdir in cache:
    return cache[workdir]
  steps = config.train.steps
  step = latest_step(workdir)
  if step is not None and step > steps:
    raise SystemExit(f'error: {workdir} holds a checkpoint of step {step}, '
                     f'beyond the budget of {steps} steps: use another '
                     '--workdir for another budget')
  if step == steps:
    log(f'{workdir}: finished ({steps} steps), not trained again')
    variables = checkpoints.restore_variables(config, workdir, log=log)
  else:
    where = f'resuming at step {step}' if step else 'from scratch'
    log(f'{workdir}: training {steps} steps ({where})')
    t0 = time.time()
    state, _ = train.train(config, workdir)
    log(f'{workdir}: trained in {(time.time() - t0) / 60:.1f} min')
    variables = jax.device_get(state.variables())
  cache[workdir] = variables
  return variables


def run_variant(split: str, variant: str, base_config, args, cache: dict,
                train_config=None):
  """Metrics of one variant on one split (from its cache when finished).

  With ``train_config`` (``--train_on``) the variant is trained on that
  split's videos and only evaluated on ``split``'s held-out videos.
  """
  from iai_jax import eval_split
  config = variant_config(base_config, variant)
  train_split = args.train_on or split
  run_dir = os.path.join(args.workdir, train_split, VARIANTS[variant][3])
  eval_dir = os.path.join(args.workdir, split, variant)
  if args.train_on and train_split != split:
    eval_dir = os.path.join(args.workdir, f'{train_split}_on_{split}', variant)
  result_path = os.path.join(eval_dir, 'ablation.json')
  steps = config.train.steps
  if not args.reeval and os.path.exists(result_path):
    with open(result_path) as f:
      cached = json.load(f)
    if cached.get('steps') == steps and latest_step(run_dir) == steps:
      log(f'{split}/{variant}: evaluated before, metrics from {result_path}')
      return cached['metrics']
  variables = trained_variables(
      variant_config(train_config, variant) if train_config else config,
      run_dir, cache)
  log(f'{split}/{variant}: evaluating on the held-out videos '
      f'(tracker {config.infer.tracker})')
  metrics = eval_split.evaluate_split(config, variables, eval_dir, 'heldout',
                                      log=log) or {}
  os.makedirs(eval_dir, exist_ok=True)
  with open(result_path, 'w') as f:
    json.dump({'split': split, 'variant': variant, 'steps': steps,
               'checkpoint': run_dir, 'metrics': metrics}, f, indent=1)
  return metrics


def markdown(results: dict, splits, variants, steps: dict,
             train_on: str = '') -> str:
  head = ['variant'] + [f'{s} {m}' for s in splits for m in METRICS]
  lines = ['| ' + ' | '.join(head) + ' |',
           '|' + '---|' + '---:|' * (len(head) - 1)]
  for v in variants:
    row = [TITLES[v]]
    for s in splits:
      stats = results.get(s, {}).get(v) or {}
      for m in METRICS:
        x = stats.get(m, -1)
        if x is None or x < 0:
          row.append('n/a')
        else:
          row.append(f'{x:.0f}' if m in COUNTS else f'{100 * x:.1f}')
    lines.append('| ' + ' | '.join(row) + ' |')
  budget = ', '.join(f'{s}: {n} steps' for s, n in steps.items())
  trained = (f'every variant trained once on the {train_on} split; '
             if train_on else 'each split trains its own runs; ')
  text = ('Ablations on the synthetic dataset (paper Table 4), held-out '
          f'videos, metrics in % (IDSW: ID switches); {trained}training '
          f'budget per variant: {budget}.\n\n' + '\n'.join(lines) + '\n')
  # the identity kept across gaps (frames the object was not visible)
  for s in splits:
    gap_rows = [(v, (results.get(s, {}).get(v) or {}).get('id_kept_by_gap'))
                for v in variants]
    gap_rows = [(v, g) for v, g in gap_rows if g]
    if not gap_rows:
      continue
    buckets = list(gap_rows[0][1])
    text += (f'\nID kept across a gap of n frames, {s} split (accuracy in %; '
             'pairs of consecutive visible frames of a GT track):\n\n'
             '| variant | ' + ' | '.join(f'gap {b}' for b in buckets) + ' |\n'
             '|---|' + '---:|' * len(buckets) + '\n')
    for v, g in gap_rows:
      cells = [('n/a' if g[b]['pairs'] == 0 else
                f'{100 * g[b]["accuracy"]:.1f} ({g[b]["pairs"]})')
               for b in buckets]
      text += f'| {TITLES[v]} | ' + ' | '.join(cells) + ' |\n'
  return text


_WORKDIR = flags.DEFINE_string(
    'workdir', 'runs/ablate', 'Runs go to WORKDIR/<split>/<variant>.')
_STEPS = flags.DEFINE_integer(
    'steps', 0, "Training steps of every variant (default: the config's "
    'train.steps, 2000).', lower_bound=0)
_VARIANTS = flags.DEFINE_list('variants', list(VARIANTS),
                              'Variants: ' + ', '.join(
                                  f'{k} ({TITLES[k]})' for k in VARIANTS))
_SPLITS = flags.DEFINE_list('splits', list(SPLITS), 'Splits to evaluate on.')
_OUT = flags.DEFINE_string('out', None,
                           'Markdown file (default: WORKDIR/ablation.md).')
_SET = flags.DEFINE_multi_string(
    'set', [], 'KEY=VALUE config override for every run, e.g. --set '
    'dataset.synthetic.num_videos=20 (repeatable).')
_DATA_ROOT = flags.DEFINE_string(
    'data_root', None, "Put each split's dataset under "
    "DATA_ROOT/<dataset name> (default: the config's).")
_TRAIN_ON = flags.DEFINE_string(
    'train_on', '', 'Train every variant once, on this split, and evaluate '
    'it on all --splits (default: each split trains its own).')
_REEVAL = flags.DEFINE_bool('reeval', False,
                            'Evaluate finished variants again.')


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  args = flags.FLAGS
  variants, splits = list(_VARIANTS.value), list(_SPLITS.value)
  bad = [v for v in variants if v not in VARIANTS]
  bad += [s for s in splits if s not in SPLITS]
  if bad or not variants or not splits:
    raise app.UsageError(
        f'unknown or missing variants/splits {bad}; variants: '
        f'{", ".join(VARIANTS)}; splits: {", ".join(SPLITS)}')
  if args.train_on and args.train_on not in SPLITS:
    raise app.UsageError(f'--train_on must be one of {", ".join(SPLITS)}')
  args.workdir = os.path.abspath(args.workdir)
  out = args.out or os.path.join(args.workdir, 'ablation.md')

  from absl import logging
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  import jax
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    # The splits (and reruns) compile the same programs: keep them on disk.
    jax.config.update('jax_compilation_cache_dir',
                      os.path.join(args.workdir, 'xla_cache'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  from iai_jax.data import tfds_builder

  configs = {s: split_config(s, args)
             for s in set(splits) | ({args.train_on} - {''})}
  train_config = configs[args.train_on] if args.train_on else None
  if train_config is not None:
    tfds_builder.ensure_records(train_config, log=log)
  results, steps = {}, {}
  t0 = time.time()
  cache = {}
  for split in splits:
    config = configs[split]
    steps[split] = config.train.steps
    log(f'split {split}: dataset {config.dataset.root}, '
        f'{config.train.steps} steps per variant')
    tfds_builder.ensure_records(config, log=log)
    if not args.train_on:
      cache = {}
    results[split] = {}
    for variant in variants:
      results[split][variant] = run_variant(split, variant, config, args, cache,
                                            train_config)
      log(f'{split}/{variant}: ' + ', '.join(
          f'{m} {results[split][variant].get(m, -1):.3f}' for m in METRICS))
  table = markdown(results, splits, variants, steps, args.train_on)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'w') as f:
    f.write(table)
  with open(os.path.splitext(out)[0] + '.json', 'w') as f:
    json.dump({'steps': steps, 'results': results}, f, indent=1)
  log(f'done in {(time.time() - t0) / 60:.1f} min; wrote {out}')
  print()
  print(table)
  return 0


if __name__ == '__main__':
  app.run(main)

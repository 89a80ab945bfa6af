"""Aggregate a sweep directory DIR/normal_<c>/seed_<s>/results.json into one table (paper style).

  python -m fcdd_jax.summarize DIR

Writes DIR/summary.md and DIR/summary.json (and DIR/results.json in the engine's format): per class the
mean ± std over seeds, overall = mean over classes of the per-class means (spec §8.2, §9).

Each run's newest readable checkpoint is found (`checkpoint_step` in summary.json) and a run whose
results.json describes another step than that checkpoint gets one warning line: its numbers then belong to a
model that is no longer on disk (rerun its training to repair it).
"""
import glob
import json
import os
import re
import sys

from absl import flags
import numpy as np

from fcdd_jax.app import cli


def aggregate(directory):
  runs = []
  for path in sorted(glob.glob(os.path.join(directory, 'normal_*', 'seed_*', 'results.json'))):
    m = re.search(r'normal_(\d+)[/\\]seed_(\d+)', path)
    with open(path) as f:
      r = json.load(f)
    runs.append({'normal_class': int(m.group(1)), 'seed': int(m.group(2)), 'image_auc': r.get('image_auc'),
                 'pixel_auc': r.get('pixel_auc'), 'path': os.path.relpath(path, directory), 'steps': r.get('steps')})
  if not runs:
    raise ValueError(f'no runs in {directory} (expected {directory}/normal_<c>/seed_<s>/results.json)')
  per_class = {}
  for c in sorted({r['normal_class'] for r in runs}):
    rs = [r for r in runs if r['normal_class'] == c]
    entry = {'seeds': [r['seed'] for r in rs]}
    for k in ('image_auc', 'pixel_auc'):
      vals = [r[k] for r in rs if r[k] is not None]
      entry[k] = float(np.mean(vals)) if vals else None
      entry[k + '_std'] = float(np.std(vals)) if vals else None
    per_class[c] = entry
  overall = {}
  for k in ('image_auc', 'pixel_auc'):
    vals = [e[k] for e in per_class.values() if e[k] is not None]
    overall[k] = float(np.mean(vals)) if vals else None
  check_checkpoints(directory, runs)
  keys = ('normal_class', 'seed', 'image_auc', 'pixel_auc', 'checkpoint_step')
  return {**overall, 'runs': [{k: r[k] for k in keys} for r in runs],
          'per_class': {str(c): e for c, e in per_class.items()}}


def check_checkpoints(directory, runs):
  """Sets run['checkpoint_step'] to the newest readable checkpoint of each run (None: none); one warning line
  per run whose results.json describes another step. Reads checkpoints only where a run has them."""
  for r in runs:
    r['checkpoint_step'] = None
    ckdir = os.path.join(directory, os.path.dirname(r['path']), 'checkpoints')
    where = os.path.dirname(r['path'])
    if not os.path.isdir(ckdir):
      continue
    from fcdd_jax.utils import checkpointing  # pylint: disable=g-import-not-at-top  (jax/orbax only when needed)
    try:
      _, _, step = checkpointing.newest_readable(ckdir)
    except (FileNotFoundError, ValueError) as e:
      print(f'warning: {where}: {e}', file=sys.stderr, flush=True)
      continue
    r['checkpoint_step'] = int(step)
    if r.get('steps') is not None and int(r['steps']) != step:
      print(f'warning: {where}: results.json describes step {r["steps"]} but the newest readable checkpoint is step '
            f'{step}; rerun its training to repair it', file=sys.stderr, flush=True)


def markdown(summary):
  f = lambda v: 'n/a' if v is None else f'{v:.4f}'
  pm = lambda e, k: 'n/a' if e[k] is None else f'{e[k]:.4f} ± {e[k + "_std"]:.4f}'
  seeds = sorted({r['seed'] for r in summary['runs']})
  by = {(r['normal_class'], r['seed']): r for r in summary['runs']}
  lines = ['| class | ' + ' | '.join(f'seed {s}' for s in seeds) + ' | image AUC mean ± std | pixel AUC mean ± std |',
           '|---|' + '---|' * len(seeds) + '---|---|']
  for c, e in summary['per_class'].items():
    cells = [f(by[(int(c), s)]['image_auc']) if (int(c), s) in by else '' for s in seeds]
    lines.append(f'| {c} | ' + ' | '.join(cells) + f' | {pm(e, "image_auc")} | {pm(e, "pixel_auc")} |')
  lines.append(f'| **mean over classes** |' + ' |' * len(seeds) + f' **{f(summary["image_auc"])}** | '
               f'**{f(summary["pixel_auc"])}** |')
  return '\n'.join(lines) + '\n'


def main(argv=None):
  """python -m fcdd_jax.summarize DIR"""
  rest, code = cli.parse_tool_flags('fcdd_jax.summarize', __doc__, flags.FlagValues(), argv)
  if code is not None:
    return code
  if len(rest) != 1:
    print('fcdd_jax.summarize: error: usage: python -m fcdd_jax.summarize DIR (see --help)', file=sys.stderr)
    return 2
  d = rest[0]
  try:
    s = aggregate(d)
  except ValueError as e:
    print(f'fcdd_jax.summarize: error: {e}', file=sys.stderr)
    return 2
  steps = sorted({r['checkpoint_step'] for r in s['runs'] if r['checkpoint_step'] is not None})
  if steps:
    print(f'fcdd_jax.summarize: {sum(r["checkpoint_step"] is not None for r in s["runs"])} of {len(s["runs"])} runs '
          f'have a readable checkpoint (steps {", ".join(map(str, steps))})', file=sys.stderr, flush=True)
  md = markdown(s)
  with open(os.path.join(d, 'summary.md'), 'w') as fh:
    fh.write(md)
  with open(os.path.join(d, 'summary.json'), 'w') as fh:
    json.dump(s, fh, indent=2)
  with open(os.path.join(d, 'results.json'), 'w') as fh:
    json.dump({k: s[k] for k in ('image_auc', 'pixel_auc', 'runs')}, fh, indent=2)
  print(md, end='')
  return 0


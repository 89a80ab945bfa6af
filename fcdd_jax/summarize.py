"""Aggregate a sweep directory DIR/normal_<c>/seed_<s>/results.json into one table (paper style).

  python -m fcdd_jax.summarize DIR

Writes DIR/summary.md and DIR/summary.json (and DIR/results.json in the engine's format): per class the
mean ± std over seeds, overall = mean over classes of the per-class means (spec §8.2, §9).
"""
import glob
import json
import os
import re
import sys

import numpy as np


def aggregate(directory):
  runs = []
  for path in sorted(glob.glob(os.path.join(directory, 'normal_*', 'seed_*', 'results.json'))):
    m = re.search(r'normal_(\d+)[/\\]seed_(\d+)', path)
    with open(path) as f:
      r = json.load(f)
    runs.append({'normal_class': int(m.group(1)), 'seed': int(m.group(2)), 'image_auc': r.get('image_auc'),
                 'pixel_auc': r.get('pixel_auc'), 'path': os.path.relpath(path, directory)})
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
  return {**overall, 'runs': [{k: r[k] for k in ('normal_class', 'seed', 'image_auc', 'pixel_auc')} for r in runs],
          'per_class': {str(c): e for c, e in per_class.items()}}


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
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    print('usage: python -m fcdd_jax.summarize DIR', file=sys.stderr)
    return 2
  d = argv[0]
  try:
    s = aggregate(d)
  except ValueError as e:
    print(f'fcdd_jax.summarize: error: {e}', file=sys.stderr)
    return 2
  md = markdown(s)
  with open(os.path.join(d, 'summary.md'), 'w') as fh:
    fh.write(md)
  with open(os.path.join(d, 'summary.json'), 'w') as fh:
    json.dump(s, fh, indent=2)
  with open(os.path.join(d, 'results.json'), 'w') as fh:
    json.dump({k: s[k] for k in ('image_auc', 'pixel_auc', 'runs')}, fh, indent=2)
  print(md, end='')
  return 0


if __name__ == '__main__':
  sys.exit(main())

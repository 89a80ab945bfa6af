#!/usr/bin/env python3
"""Sweep one experiment over nominal classes x seeds; writes DIR/normal_<c>/seed_<s>/ and a summary.

  python launch/sweep.py --config configs/fmnist.py --workdir runs/fmnist --classes 0-9 --seeds 0-4 \\
      [--runner "python launch/local.py --num_processes 2 --"] [-- --config.num_epochs=10 ...]

Each run is `python -m fcdd_jax.main --config CFG --workdir DIR/normal_<c>/seed_<s> --config.seed=<s>
--config.data.normal_class=<c> [extra args]`, started through --runner when given (e.g. the local
multi-process launcher or `srun`). Finished runs (results.json present) are skipped, so rerunning the same
command resumes the sweep; an interrupted run resumes from its checkpoint. At the end
`python -m fcdd_jax.summarize DIR` writes DIR/summary.md and DIR/summary.json (mean over seeds, then over
classes) and DIR/results.json in the engine's results format.
"""
import argparse
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_range(text):
  """'0-9' -> [0..9]; '0,3,5' -> [0,3,5]; '2' -> [2]."""
  out = []
  for part in str(text).split(','):
    part = part.strip()
    if not part:
      continue
    if '-' in part[1:]:
      lo, hi = part.split('-', 1)
      out.extend(range(int(lo), int(hi) + 1))
    else:
      out.append(int(part))
  if not out:
    raise ValueError(f'empty range {text!r}; use e.g. 0-9 or 0,3,5')
  return out


def run_dir(workdir, c, s):
  return os.path.join(workdir, f'normal_{c}', f'seed_{s}')


def sweep(config, workdir, classes, seeds, extra=(), runner='', python=sys.executable, dry_run=False):
  failures = []
  for c in classes:
    for s in seeds:
      rd = run_dir(workdir, c, s)
      if os.path.exists(os.path.join(rd, 'results.json')):
        print(f'sweep: normal_{c}/seed_{s} already finished, skipping', flush=True)
        continue
      cmd = shlex.split(runner) if runner else [python]
      if not runner:
        cmd += ['-m', 'fcdd_jax.main']
      cmd += ['--config', config, '--workdir', rd, f'--config.seed={s}', f'--config.data.normal_class={c}',
              *extra]
      print('sweep: ' + ' '.join(shlex.quote(x) for x in cmd), flush=True)
      if dry_run:
        continue
      code = subprocess.call(cmd, cwd=ROOT)
      if code != 0:
        print(f'sweep: normal_{c}/seed_{s} failed with exit code {code}', file=sys.stderr, flush=True)
        failures.append((c, s, code))
  if not dry_run:
    subprocess.call([python, '-m', 'fcdd_jax.summarize', workdir], cwd=ROOT)
  return failures


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', required=True)
  p.add_argument('--workdir', required=True)
  p.add_argument('--classes', default='0', help="e.g. 0-9 or 0,3,5")
  p.add_argument('--seeds', default='0-4', help="e.g. 0-4")
  p.add_argument('--runner', default='', help='command prefix that runs fcdd_jax.main, e.g. the local launcher')
  p.add_argument('--dry_run', action='store_true')
  p.add_argument('extra', nargs=argparse.REMAINDER, help='extra arguments for fcdd_jax.main (after --)')
  a = p.parse_args()
  extra = a.extra[1:] if a.extra[:1] == ['--'] else a.extra
  try:
    classes, seeds = parse_range(a.classes), parse_range(a.seeds)
  except ValueError as e:
    print(f'sweep: error: {e}', file=sys.stderr)
    sys.exit(2)
  failures = sweep(a.config, a.workdir, classes, seeds, extra, a.runner, dry_run=a.dry_run)
  if failures:
    print(f'sweep: {len(failures)} run(s) failed: ' + ', '.join(f'normal_{c}/seed_{s} (exit {k})'
                                                            for c, s, k in failures), file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  main()

"""Exact pixel AUC on 50 M and 200 M pixels: seconds and peak RSS (one subprocess per size), and sklearn's
roc_auc_score where it fits.

  python -m bench.pixel_auc [--sizes 50e6,200e6] [--sklearn_max 50e6]
"""
import argparse
import json
import resource
import subprocess
import sys
import time

from bench import common


def _child(n, impl):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  per = 1024 * 1024
  k = max(1, int(n) // per)
  masks = [(rng.random((1024, 1024)) > 0.97).astype(np.uint8) for _ in range(k)]
  maps = [rng.random((1024, 1024)).astype(np.float32) + m * np.float32(0.3) for m in masks]
  base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  t = time.perf_counter()
  if impl == 'jax':
    from fcdd_jax.evaluation import metrics as evaluation  # pylint: disable=g-import-not-at-top
    auc = evaluation.pixel_auc(masks, maps)
  else:
    from sklearn import metrics  # pylint: disable=g-import-not-at-top
    auc = metrics.roc_auc_score(np.concatenate([m.ravel() for m in masks]), np.concatenate([h.ravel() for h in maps]))
  sec = time.perf_counter() - t
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  print(json.dumps({'auc': auc, 'seconds': sec, 'pixels': k * per, 'extra_peak_mb': (peak - base) / 1024,
                    'input_mb': k * per * 5 / 2 ** 20}))


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--sizes', default='50e6,200e6')
  p.add_argument('--sklearn_max', type=float, default=50e6)
  p.add_argument('--child', default=None)
  p.add_argument('--impl', default='jax')
  a = p.parse_args()
  if a.child:
    _child(float(a.child), a.impl)
    return
  for n in [float(s) for s in a.sizes.split(',')]:
    for impl in ('jax', 'sklearn'):
      if impl == 'sklearn' and n > a.sklearn_max:
        continue
      out = subprocess.run([sys.executable, '-m', 'bench.pixel_auc', '--child', str(n), '--impl', impl],
                           capture_output=True, text=True, cwd=common.ROOT)
      if out.returncode != 0:
        common.emit(impl='fcdd_jax' if impl == 'jax' else 'sklearn', net='pixel_auc', batch=int(n),
                    error=out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f'exit {out.returncode}')
        continue
      r = json.loads(out.stdout.strip().splitlines()[-1])
      common.emit(impl='jax' if impl == 'jax' else 'sklearn', net='pixel_auc', batch=r['pixels'],
                  seconds=round(r['seconds'], 2), extra_peak_mb=round(r['extra_peak_mb'], 1),
                  bytes_per_pixel=round(r['extra_peak_mb'] * 2 ** 20 / r['pixels'], 2), auc=r['auc'],
                  device_kind=common.cpu_kind())


if __name__ == '__main__':
  main()

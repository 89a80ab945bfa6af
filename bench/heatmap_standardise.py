"""Eval-only experiment (issue 24, rejected): a finished run's test heatmaps standardised per pixel by its nominal
training heatmaps: `sub` the mean subtracted (before or after the upsampling is the same, it is linear), `z`
mean and std at full resolution, `z_low` on the low-res map before the upsampling; scored like a run (image AUC
by max and mean, pixel AUC and AUPRO at the masks' resolution, border ratio). Results and the reading:
bench/README.md, "Panel", session 10.

  python -m bench.heatmap_standardise RUN_DIR OUT.json    # RUN_DIR: a finished run with its final checkpoint
"""
import json
import os
import sys

import numpy as np
import jax
from bench import common
from fcdd_jax.evaluation import results as R
from fcdd_jax.models import receptive

def main(run_dir, out_json):
  if os.path.exists(out_json):
    return
  pipe, built, state, ev = common.restore_finished_run(run_dir)
  test = R.run_evaluation(state, pipe, ev, built.data_sharding, 'test', 16)
  train = R.run_evaluation(state, pipe, ev, built.data_sharding, 'train', 16)
  lab = test['label'].astype(int)
  th, tr = test['heatmap'].astype(np.float64), train['heatmap'].astype(np.float64)
  tl, trl = test['heatmap_lowres'].astype(np.float64), train['heatmap_lowres'].astype(np.float64)
  mu, sd = tr.mean(0), tr.std(0)
  mul, sdl = trl.mean(0), trl.std(0)
  masks = pipe.test_masks_original() if pipe.info.test_gtmaps else None
  out = {'run': run_dir, 'n_train': int(len(tr))}
  sc = built.step_config
  def up(low):
    low = jax.numpy.asarray(low, jax.numpy.float32)
    return np.asarray(receptive.upsample(low, sc.reception, sc.image_size, std=sc.gauss_std))
  variants = {
    'raw': th,
    'sub': th - mu,
    'z': (th - mu) / (sd + sd.mean() * 0.1),
    'z_low': up((tl - mul) / (sdl + sdl.mean() * 0.1)),
  }
  out.update({k: common.score_heatmaps(lab, h, masks) for k, h in variants.items()})
  json.dump(out, open(out_json, 'w'))
  print(json.dumps(out))

if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2])

"""Eval-only experiment (issue 24): test-time flips. A finished run's test heatmaps averaged over the image and
its flipped copies (each heatmap flipped back before the average): `raw` (no flip), `h` (+ left-right), `hv`
(+ up-down and both). Scored like a run: image AUC by max and mean, pixel AUC and AUPRO at the masks'
resolution, border ratio (16 px) of the nominal heatmaps. Results: bench/README.md, "Panel".

  python -m bench.tta RUN_DIR OUT.json    # RUN_DIR: a finished run with its final checkpoint
"""
import json
import os
import sys

import numpy as np
import jax.numpy as jnp
from bench import common
from fcdd_jax.evaluation import results as R

FLIPS = {'id': (), 'h': (2,), 'v': (1,), 'hv': (1, 2)}   # axes of NHWC images = of [B,H,W] heatmaps


def flipped_eval(ev, axes):
  if not axes:
    return ev
  def fn(state, batch):
    out = ev(state, {**batch, 'image': jnp.flip(batch['image'], axes)})
    return {**out, 'heatmap': jnp.flip(out['heatmap'], axes)}
  return fn


def main(run_dir, out_json):
  if os.path.exists(out_json):
    return
  pipe, built, state, ev = common.restore_finished_run(run_dir)
  heats, lab = {}, None
  for name, axes in FLIPS.items():
    test = R.run_evaluation(state, pipe, flipped_eval(ev, axes), built.data_sharding, 'test', 16)
    heats[name] = test['heatmap'].astype(np.float64)
    lab = test['label'].astype(int)
  masks = pipe.test_masks_original() if pipe.info.test_gtmaps else None
  variants = {'raw': heats['id'], 'h': (heats['id'] + heats['h']) / 2,
              'hv': sum(heats.values()) / 4}
  out = {'run': run_dir, **{k: common.score_heatmaps(lab, h, masks) for k, h in variants.items()}}
  json.dump(out, open(out_json, 'w'))
  print(json.dumps(out))


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2])

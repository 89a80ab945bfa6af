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
import jax
import jax.numpy as jnp
import ml_collections
from fcdd_jax import input_pipeline
from fcdd_jax.evaluation import metrics as M
from fcdd_jax.evaluation import results as R
from fcdd_jax.pipeline import run, steps
from fcdd_jax.utils import checkpointing

FLIPS = {'id': (), 'h': (2,), 'v': (1,), 'hv': (1, 2)}   # axes of NHWC images = of [B,H,W] heatmaps


def flipped_eval(ev, axes):
  if not axes:
    return ev
  def fn(state, batch):
    out = ev(state, {**batch, 'image': jnp.flip(batch['image'], axes)})
    return {**out, 'heatmap': jnp.flip(out['heatmap'], [a for a in axes])}
  return fn


def main(run_dir, out_json):
  if os.path.exists(out_json):
    return
  c = ml_collections.ConfigDict(json.load(open(os.path.join(run_dir, 'config.json'))))
  pipe = input_pipeline.create(c)
  built = run.build_run(c, pipe.info, pipe.info.steps_per_epoch)
  ck = checkpointing.Checkpointer(os.path.join(run_dir, 'checkpoints'), max_to_keep=1, asynchronous=False)
  state, _, _ = ck.restore_latest(built.init_state(jax.random.PRNGKey(0)))
  ck.close()
  ev = steps.compile_eval(built)
  heats, lab = {}, None
  for name, axes in FLIPS.items():
    test = R.run_evaluation(state, pipe, flipped_eval(ev, axes), built.data_sharding, 'test', 16)
    heats[name] = test['heatmap'].astype(np.float64)
    lab = test['label'].astype(int)
  masks = pipe.test_masks_original() if pipe.info.test_gtmaps else None
  variants = {'raw': heats['id'], 'h': (heats['id'] + heats['h']) / 2,
              'hv': sum(heats.values()) / 4}
  out = {'run': run_dir}
  nom = lab == 0
  for k, h in variants.items():
    r = {'image_auc_max': float(M.roc_auc(lab, h.reshape(len(h), -1).max(1))),
         'image_auc_mean': float(M.roc_auc(lab, h.reshape(len(h), -1).mean(1)))}
    if masks is not None:
      maps = [M.resize_nearest(x, m.shape) for x, m in zip(h, masks)]
      r['pixel_auc'] = float(M.pixel_auc(masks, np.stack(maps).astype(np.float32)))
      r['aupro'] = float(M.aupro([masks[i].astype(np.uint8) for i in range(len(masks))], maps))
    s, a = M.border_share(h[nom], band=16)
    r['border'] = s / a
    out[k] = r
  json.dump(out, open(out_json, 'w'))
  print(json.dumps(out))


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2])

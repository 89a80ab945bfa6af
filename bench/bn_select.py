"""Eval-only experiment (issue 24): can a data set's BatchNorm statistics be chosen without its test labels?

The panel's trade (bench/README.md, "Panel"): PreciseBN helps the textures (AITEX, ELPV) and costs the tire's
localisation. Here, for one finished run (running statistics), each of the three choices — `running`, `pbn`
(PreciseBN on the nominal training images), `pbns` (PreciseBN on one epoch of the training stream) — is scored
on the real test set (image AUC by max and mean, pixel AUC, AUPRO, border ratio) and on a validation made
from up to N nominal training images only: the images clean vs corrupted by a synthetic anomaly (`KINDS`;
confetti is the training anomaly, CutPaste and blob self-paste are not), image AUC (max, mean) and the pixel
AUC of the corruption's map. A selector is useful where the validation's ranking of the three predicts the
test's. Results: bench/README.md, "Session 18".

  python -m bench.bn_select RUN_DIR OUT.json [N]    # RUN_DIR: a finished run with its final checkpoint; N: 128
"""
import copy
import json
import os
import sys
import time

import numpy as np
import jax
import ml_collections
from bench import common
from fcdd_jax.data import anomalies
from fcdd_jax.evaluation import metrics as M
from fcdd_jax.evaluation import results as R
from fcdd_jax.pipeline import steps

KINDS = ('confetti', 'cutpaste_mixed', 'blobpaste')


def corrupted(pipe, images, kind, seed):
  rng = np.random.default_rng(seed)
  out, maps = [], []
  for img in images:
    a, gt = anomalies.make_anomaly('malformed_normal_gt', kind, rng, np.asarray(img))
    out.append(a)
    maps.append(pipe.transform.test_mask(gt.astype(np.float32)))
  return out, np.stack(maps)


def heatmaps(st, pipe, ev, built, images):
  pipe.train_images = images
  return R.run_evaluation(st, pipe, ev, built.data_sharding, 'train', 16)['heatmap'].astype(np.float32)


def main(run_dir, out_json, n):
  t0 = time.time()
  pipe, built, state, ev = common.restore_finished_run(run_dir)
  with open(os.path.join(run_dir, 'config.json')) as f:
    c = ml_collections.ConfigDict(json.load(f))
  states = {'running': state}
  for name, data in (('pbn', 'images'), ('pbns', 'stream')):
    cc = copy.deepcopy(c)
    cc.model.precise_bn = True
    cc.model.precise_bn_data = data
    states[name] = jax.block_until_ready(steps.precise_bn(cc, state, pipe, built))
  all_train = list(pipe.train_images)
  idx = np.random.default_rng(0).permutation(len(all_train))[:n]
  clean = [all_train[i] for i in sorted(idx)]
  synth = {k: corrupted(pipe, clean, k, 123 + j) for j, k in enumerate(KINDS)}
  masks = pipe.test_masks_original() if pipe.info.test_gtmaps else None
  out = {'run': run_dir, 'n_val': len(clean)}
  for name, st in states.items():
    pipe.train_images = all_train
    test = R.run_evaluation(st, pipe, ev, built.data_sharding, 'test', 16)
    r = {'test': common.score_heatmaps(test['label'].astype(int), test['heatmap'].astype(np.float32), masks)}
    hc = heatmaps(st, pipe, ev, built, clean)
    r['clean_max'] = hc.reshape(len(hc), -1).max(1).tolist()
    r['clean_mean'] = hc.reshape(len(hc), -1).mean(1).tolist()
    for k, (imgs, gmaps) in synth.items():
      ha = heatmaps(st, pipe, ev, built, imgs)
      lab = np.r_[np.zeros(len(hc)), np.ones(len(ha))].astype(int)
      smax = np.r_[hc.reshape(len(hc), -1).max(1), ha.reshape(len(ha), -1).max(1)]
      smean = np.r_[hc.reshape(len(hc), -1).mean(1), ha.reshape(len(ha), -1).mean(1)]
      r[k] = {'image_auc_max': float(M.roc_auc(lab, smax)), 'image_auc_mean': float(M.roc_auc(lab, smean)),
              'pixel_auc': float(M.pixel_auc(gmaps > 0.5, ha)),
              'max': ha.reshape(len(ha), -1).max(1).tolist(), 'mean': ha.reshape(len(ha), -1).mean(1).tolist()}
    pipe.train_images = all_train
    out[name] = r
    print(name, json.dumps({'test': r['test'], **{k: {m: round(v, 3) for m, v in r[k].items()
                                                      if not isinstance(v, list)} for k in KINDS}}), flush=True)
  out['seconds'] = time.time() - t0
  with open(out_json, 'w') as f:
    json.dump(out, f)


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 128)

"""Evaluation outputs and what a run writes from them: per-example outputs gathered from all processes,
image/pixel AUC (spec §8.2), stored thresholds and AUPRO, results.json, history.json, reports and figures.

Host-side; the jitted eval step is `steps.eval_step`. Shared by the single run (`train`), many-runs mode
(`multirun`) and refinement rounds, so they gather, score and write alike.
"""
import json
import os

from absl import logging
import jax
import numpy as np

from fcdd_jax.evaluation import metrics as evaluation
from fcdd_jax import input_pipeline
from fcdd_jax.utils import progress


def host_gather(tree):
  """Per-example outputs from all processes as NumPy (exact AUCs on multi-host runs)."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def run_evaluation(state, pipeline, eval_fn, sharding, split='test', batch_size=None, keep_images=0,
                   max_batches=None, verbose=False):
  """Runs the jitted eval step over a split; returns host NumPy arrays of valid examples in order.

  With keep_images=n the inputs of the first n nominal and n anomalous examples this process sees are
  kept (key 'samples': {index: image}) for figures.
  """
  outs, samples, counts = [], {}, {0: 0, 1: 0}

  def local_batches():
    for i, b in enumerate(pipeline.eval_batches(split=split, batch_size=batch_size)):
      if max_batches is not None and i >= max_batches:
        break
      if keep_images:
        for i in range(len(b['label'])):
          lab = int(b['label'][i])
          if b['valid'][i] > 0 and counts.get(lab, keep_images) < keep_images:
            counts[lab] += 1
            samples[int(b['index'][i])] = np.array(b['image'][i])
      yield b

  total = pipeline.num_eval_batches(split, batch_size)
  total = total if max_batches is None else min(total, max_batches)
  track = progress.Progress(f'evaluating {split}', total, 'batches', enabled=verbose)
  for gb in input_pipeline.prefetch_to_device(local_batches(), sharding):
    outs.append(eval_fn(state, gb))
    if len(outs) > 1:
      jax.block_until_ready(outs[-2])
    track.update()
  track.close()
  if not outs:
    return {}
  host = [host_gather(o) for o in outs]
  res = {k: np.concatenate([h[k] for h in host]) for k in host[0]}
  keep = res['valid'] > 0 if 'valid' in res else np.ones(len(res['score']), bool)
  res = {k: v[keep] for k, v in res.items()}
  if 'index' in res:
    order = np.argsort(res['index'], kind='stable')
    res = {k: v[order] for k, v in res.items()}
  res['samples'] = samples
  return res


def compute_metrics(config, pipeline, outputs):
  """Image AUC and pixel AUC (spec §8.2) from gathered per-example outputs."""
  labels = outputs['label'].astype(np.int32)
  image_auc = None
  if len(np.unique(labels)) == 2:
    image_auc = float(evaluation.roc_auc(labels, outputs['score']))
  else:
    logging.warning('test split has a single label; image AUC is undefined')
  pixel_auc = None
  if config.eval.pixel_auc and pipeline.info.test_gtmaps:
    masks = pipeline.test_masks_original() if config.eval.pixel_auc_resolution == 'original' else None
    if masks is not None:
      maps = (evaluation.resize_nearest(h, m.shape) for h, m in zip(outputs['heatmap'], masks))
      pixel_auc = float(evaluation.pixel_auc(masks, maps))
    elif 'gtmap' in outputs:
      pixel_auc = float(evaluation.pixel_auc(list(outputs['gtmap'] > 0.5), list(outputs['heatmap'])))
  return image_auc, pixel_auc


def thresholds_and_aupro(config, outputs):
  """Thresholds stored with the run (image and pixel), AUPRO where masks exist, and where the hottest nominal
  heatmap pixels lie (`border`: evaluation.border_share, top 1 %, 16 and 32 px bands; corner blobs of a
  224² heatmap sit about 20 px in).

  Labelled test data: the F1-maximising threshold; nominal-only data: the config.eval.threshold_quantile
  quantile of nominal scores (pixels: of nominal heatmap values).
  """
  labels = outputs['label'].astype(np.int32)
  scores = outputs['score']
  out = {'thresholds': evaluation.image_threshold(labels, scores, config.eval.threshold_quantile)}
  heat = outputs.get('heatmap')
  if heat is not None and heat.ndim == 3:
    if 'gtmap' in outputs and outputs['gtmap'].max() > 0:
      gt = outputs['gtmap'] > 0.5
      rng = np.random.default_rng(0)
      flat_h, flat_g = heat.reshape(-1), gt.reshape(-1)
      if flat_h.size > 4_000_000:  # the threshold (not the AUC) is fitted on a uniform pixel subsample
        sel = rng.choice(flat_h.size, 4_000_000, replace=False)
        flat_h, flat_g = flat_h[sel], flat_g[sel]
      t, f1 = evaluation.f1_max_threshold(flat_g.astype(np.int32), flat_h)
      out['thresholds']['pixel'] = float(t)
      out['thresholds']['pixel_f1'] = float(f1)
      out['thresholds']['pixel_rule'] = 'f1_max over test pixels (net input resolution)'
      out['aupro'] = float(evaluation.aupro(list(gt.astype(np.uint8)), list(heat)))
    else:
      q = config.eval.threshold_quantile
      nominal = heat[labels == 0] if (labels == 0).any() else heat
      out['thresholds']['pixel'] = float(evaluation.quantile_threshold(nominal.reshape(-1), q))
      out['thresholds']['pixel_rule'] = f'quantile {q} of nominal heatmap pixels'
    if (labels == 0).any():  # the border artefact: where the hottest 1 % of nominal heatmap pixels lie
      (share, area), (share32, area32) = evaluation.border_share(heat[labels == 0], band=(16, 32), top=0.01)
      out['border'] = {'top1_share': share, 'band_area': area, 'ratio': share / area, 'band_px': 16,
                       'top1_share32': share32, 'band_area32': area32, 'ratio32': share32 / area32}
  return out


# ----------------------------------------------------------------------------------------------------
# Files of a run

def jsonable(x):
  """`x` with NumPy arrays/scalars and tuples turned into JSON types."""
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, np.generic):
    return x.item()
  return x


def write_json(workdir, name, obj):
  """workdir/name with `obj` (made JSON-able), indented."""
  with open(os.path.join(workdir, name), 'w') as f:
    json.dump(jsonable(obj), f, indent=2)


def append_history(workdir, history):
  """Adds the entries of `history` past the last step already in workdir/history.json (resumed runs)."""
  path = os.path.join(workdir, 'history.json')
  old = read_history(workdir) or []
  last = old[-1]['step'] if old else 0
  with open(path, 'w') as f:
    json.dump(old + [h for h in history if h['step'] > last], f, indent=1)


def read_history(workdir):
  path = os.path.join(workdir, 'history.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_figures(workdir, config, pipeline, outputs, train_outputs=None, results=None):
  """Reports (ROC curves, results.md; with `results`) and heatmap figures. A figure that cannot be written
  is a warning, never a lost run (environment FCDD_STRICT_FIGURES: an error, for tests)."""
  try:
    if results is not None:
      from fcdd_jax.evaluation import reports  # pylint: disable=g-import-not-at-top
      reports.write_reports(workdir, results, outputs, read_history(workdir))
    if outputs.get('native'):   # patch-trained runs: whole images of their own sizes
      from fcdd_jax.evaluation import native_figures  # pylint: disable=g-import-not-at-top
      native_figures.write_figures(workdir, config, pipeline.test_images, outputs, pipeline.test_masks_original())
      return
    from fcdd_jax.evaluation import figures  # pylint: disable=g-import-not-at-top
    figures.write_run_figures(workdir, config, pipeline, outputs, train_outputs)
  except Exception as e:  # pylint: disable=broad-except  (figures never lose a finished run)
    if os.environ.get('FCDD_STRICT_FIGURES'):   # tests: a figure that cannot be written is an error
      raise
    print(f'warning: figures of {workdir} could not be written: {type(e).__name__}: {e} (--verbose for the '
          'traceback)', flush=True)
    logging.debug('figures failed', exc_info=True)

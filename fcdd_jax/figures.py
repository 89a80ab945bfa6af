"""Figures written into the workdir (PNG): test samples with their heatmaps and ground truth."""
import os

import numpy as np


def _to_uint8_image(x):
  x = np.asarray(x, np.float32)
  lo, hi = float(x.min()), float(x.max())
  x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
  if x.ndim == 2 or x.shape[-1] == 1:
    x = np.repeat(x.reshape(x.shape[:2] + (1,)), 3, -1)
  return (x * 255).round().astype(np.uint8)


def _jet(x):
  import matplotlib  # pylint: disable=g-import-not-at-top
  return (matplotlib.colormaps['jet'](np.clip(x, 0, 1))[..., :3] * 255).round().astype(np.uint8)


def sample_grid(images, heatmaps, gtmaps=None, quantile=0.97):
  """Rows: inputs, heatmaps (local normalisation: min, qu-quantile), [ground truth]."""
  rows = [np.concatenate([_to_uint8_image(im) for im in images], 1)]
  hm = []
  for h in heatmaps:
    h = np.asarray(h, np.float32) - float(np.min(h))
    q = float(np.sort(h.ravel())[int(quantile * (h.size - 1))])
    hm.append(_jet(h / q if q > 0 else h))
  rows.append(np.concatenate(hm, 1))
  if gtmaps is not None:
    rows.append(np.concatenate([_to_uint8_image(np.asarray(g, np.float32)) for g in gtmaps], 1))
  return np.concatenate(rows, 0)


def write_run_figures(workdir, config, pipeline, outputs):
  """test_samples.png: the first nominal and anomalous test samples with heatmaps (and masks)."""
  del pipeline
  from PIL import Image  # pylint: disable=g-import-not-at-top
  samples = outputs.get('samples') or {}
  pos = {int(ix): i for i, ix in enumerate(outputs['index'])}
  idx = sorted(samples, key=lambda ix: (int(outputs['label'][pos[ix]]), ix))
  idx = [ix for ix in idx if ix in pos]
  if not idx:
    return
  gts = [outputs['gtmap'][pos[ix]] for ix in idx] if 'gtmap' in outputs else None
  grid = sample_grid([samples[ix] for ix in idx], [outputs['heatmap'][pos[ix]] for ix in idx], gts,
                     config.eval.quantile)
  img = Image.fromarray(grid)
  scale = max(1, 128 // grid.shape[0] * 2) if grid.shape[0] < 128 else 1
  if scale > 1:
    img = img.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
  img.save(os.path.join(workdir, 'test_samples.png'))

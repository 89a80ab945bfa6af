"""Whole-image evaluation at native resolution of a patch-trained run (`data.patch_size > 0`, issue 27).

Every test image is scored whole, at its own size: the net runs over it tile by tile (`tiling.TiledNet`,
exactly one pass over the whole image), the low-resolution map is upsampled with the Gaussian receptive
field to the image's height x width (spec §4), and the image score is `eval.image_score` of that whole map
(mean of the low-resolution map, or max / top p % of the heatmap). Pixel AUC and AUPRO are computed against
the masks at their files' own resolution (heatmaps are nearest-resized to it only when `data.scale` != 1).
Thresholds: F1-maximising on labelled test data (images; pixels on a uniform subsample of 4M pixels), else
`eval.threshold_quantile` of nominal scores / heatmap pixels.

The evaluation runs on every process alike (the state is replicated; the test set is not split over
processes): patch mode refuses many-runs and refinement (`config_checks`).
"""
import numpy as np

from fcdd_jax.evaluation import metrics as evaluation
from fcdd_jax.models import losses
from fcdd_jax.utils import progress
from fcdd_jax.models import tiling

PIXEL_SAMPLE = 4_000_000   # pixels on which the pixel threshold is fitted (the AUCs use every pixel)


class NativeScorer:
  """Scores uint8 images of any size with a patch-trained net: `score(images) -> (scores, heatmaps)`.

  `net`: the run's FCDD net with any_size=True; `normalize(uint8 [..., h, w, C]) -> float32` the run's value
  normalisation (no geometry); `tile`: core pixels per tile side (memory is bounded by the tile)."""

  def __init__(self, net, variables, reception, normalize, *, gauss_std=None, image_score='mean',
               tile=tiling.DEFAULT_TILE, channels=3, verbose=False):
    self.tiled = tiling.TiledNet(net, variables, reception, tile=tile, channels=channels, verbose=verbose)
    self.reception, self.normalize, self.std = reception, normalize, gauss_std
    self.top = losses.parse_image_score(image_score)
    self.tile = int(tile)

  def rows_per_batch(self, h, w):
    """Images of h x w scored in one net call: as many whole images as fit one tile's pixels (else 1)."""
    return max(1, (self.tile * self.tile) // (h * w))

  def score_batch(self, images):
    """Equal-size uint8 images [h,w,C] -> (scores, float32 heatmaps [h,w]) of one net call per tile."""
    h, w = images[0].shape[:2]
    def region(y0, y1, x0, x1):
      return np.stack([self.normalize(im[y0:y1, x0:x1]) for im in images])
    low = self.tiled.lowres(region, h, w, len(images))
    heats = [tiling.upsample(l, self.reception, (h, w), self.std) for l in low]
    return [tiling.image_score(l, hm, self.top) for l, hm in zip(low, heats)], heats

  def score(self, images, what='scoring images at native resolution', verbose=False):
    """uint8 images of any sizes -> (scores [n] float64, list of n float32 heatmaps at each image's size)."""
    groups = {}
    for i, im in enumerate(images):
      groups.setdefault(tuple(im.shape[:2]), []).append(i)
    scores, heats = np.zeros(len(images)), [None] * len(images)
    track = progress.Progress(what, len(images), 'images', enabled=verbose)
    for (h, w), idx in groups.items():
      b = self.rows_per_batch(h, w)
      for k in range(0, len(idx), b):
        chunk = idx[k:k + b]
        s, hm = self.score_batch([images[i] for i in chunk])
        for i, si, hi in zip(chunk, s, hm):
          scores[i], heats[i] = si, hi
          track.update()
    track.close()
    return scores, heats


def _pixel_threshold(masks, heats, labels, q):
  """(threshold, F1 or None, rule): F1-max on a uniform pixel subsample where masks exist, else quantile q of
  the nominal images' heatmap pixels."""
  rng = np.random.default_rng(0)
  total = sum(h.size for h in heats)
  take = min(1.0, PIXEL_SAMPLE / max(1, total))
  def sample(a):
    a = np.asarray(a).reshape(-1)
    return a if take >= 1 else a[rng.random(a.size) < take]
  if masks is not None and any(np.any(m) for m in masks):
    hs, gs = [], []
    for m, h in zip(masks, heats):
      sel = rng.random(h.size) < take if take < 1 else slice(None)
      hs.append(h.reshape(-1)[sel])
      gs.append((m.reshape(-1) > 0)[sel])
    t, f1 = evaluation.f1_max_threshold(np.concatenate(gs).astype(np.int32), np.concatenate(hs))
    return float(t), float(f1), 'f1_max over test pixels (native resolution, uniform subsample)'
  nominal = [sample(h) for h, lab in zip(heats, labels) if lab == 0] or [sample(h) for h in heats]
  return (float(evaluation.quantile_threshold(np.concatenate(nominal), q)), None,
          f'quantile {q} of nominal heatmap pixels (native resolution)')


def metrics(config, labels, scores, heats, masks):
  """results entries: image_auc, pixel_auc, aupro (masks at their own resolution), thresholds."""
  labels = np.asarray(labels, np.int32)
  out = {'image_auc': None, 'pixel_auc': None, 'thresholds': {}}
  th = out['thresholds']
  if len(np.unique(labels)) == 2:
    out['image_auc'] = float(evaluation.roc_auc(labels, scores))
    t, f1 = evaluation.f1_max_threshold(labels, scores)
    th.update(image=float(t), image_f1=float(f1), image_rule='f1_max on the labelled test set')
  else:
    q = config.eval.threshold_quantile
    th.update(image=float(evaluation.quantile_threshold(scores[labels == 0], q)),
              image_rule=f'quantile {q} of nominal test scores')
  if masks is not None:
    heats = [h if h.shape == m.shape else evaluation.resize_nearest(h, m.shape) for h, m in zip(heats, masks)]
    if config.eval.pixel_auc and any(np.any(m) for m in masks):
      out['pixel_auc'] = float(evaluation.pixel_auc(masks, heats))
      out['aupro'] = float(evaluation.aupro(masks, heats))
  t, f1, rule = _pixel_threshold(masks, heats, labels, config.eval.threshold_quantile)
  th.update(pixel=t, pixel_rule=rule)
  if f1 is not None:
    th['pixel_f1'] = f1
  return out


def evaluate(config, pipeline, scorer, verbose=False):
  """Scores the whole test split at native resolution. Returns (outputs, results): outputs 'score', 'label',
  'index', 'heatmap' (list of arrays of each image's size), 'native' True; results as `metrics` plus `runs`
  and `native_resolution`."""
  images = list(pipeline.test_images)
  labels = np.asarray(pipeline.test_labels, np.int32)
  scores, heats = scorer.score(images, 'evaluating test images at native resolution', verbose)
  res = metrics(config, labels, scores, heats, pipeline.test_masks_original())
  res['runs'] = [{'normal_class': int(pipeline.info.normal_class), 'seed': int(config.seed),
                  'image_auc': res['image_auc'], 'pixel_auc': res['pixel_auc']}]
  res['native_resolution'] = {'patch_size': int(config.data.patch_size), 'scale': float(config.data.scale),
                              'tile': scorer.tile, 'tiles_run': scorer.tiled.tiles_run,
                              'image_sizes': sorted({f'{im.shape[1]}x{im.shape[0]}' for im in images})}
  outputs = {'score': scores, 'label': labels, 'index': np.arange(len(images)), 'heatmap': heats, 'native': True}
  return outputs, res

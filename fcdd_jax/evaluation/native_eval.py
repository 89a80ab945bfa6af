"""Whole-image evaluation at native resolution of a patch-trained run (`data.patch_size > 0`, issue 27).

Every test image is scored whole, at its own size: the net runs over it tile by tile (`tiling.TiledNet`,
exactly one pass over the whole image), the low-resolution map is upsampled with the Gaussian receptive
field to the image's height x width (spec §4), and the image score is `eval.image_score` of that whole map
(mean of the low-resolution map, or max / top p % of the heatmap). Pixel AUC and AUPRO are computed against
the masks at their files' own resolution (heatmaps are nearest-resized to it only when `data.scale` != 1;
`eval.pixel_auc_resolution=input`: the masks to the heatmaps instead), streamed image by image into a
bounded histogram (`pixel_stream`; results.json `native_resolution.pixel_metrics` states the bound on the
binning error), so memory does not grow with the test set. Thresholds: F1-maximising on labelled test data
(images; pixels on a uniform subsample of 4M pixels), else `eval.threshold_quantile` of nominal scores /
heatmap pixels.

The evaluation runs on every process alike (the state is replicated; the test set is not split over
processes): patch mode refuses many-runs and refinement (`config_checks`).
"""
import numpy as np

from fcdd_jax.evaluation import figures
from fcdd_jax.evaluation import metrics as evaluation
from fcdd_jax.evaluation import native_figures
from fcdd_jax.evaluation import pixel_stream
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

  def iter_scores(self, images):
    """Yields (index, score, float32 heatmap at the image's size) for uint8 images of any sizes, images of one
    size batched (one net call per tile), groups in order of first appearance."""
    groups = {}
    for i, im in enumerate(images):
      groups.setdefault(tuple(np.shape(im)[:2]), []).append(i)
    for (h, w), idx in groups.items():
      b = self.rows_per_batch(h, w)
      for k in range(0, len(idx), b):
        chunk = idx[k:k + b]
        s, hm = self.score_batch([images[i] for i in chunk])
        yield from zip(chunk, s, hm)

  def score(self, images, what='scoring images at native resolution', verbose=False):
    """uint8 images of any sizes -> (scores [n] float64, list of n float32 heatmaps at each image's size)."""
    scores, heats = np.zeros(len(images)), [None] * len(images)
    track = progress.Progress(what, len(images), 'images', enabled=verbose)
    for i, s, h in self.iter_scores(images):
      scores[i], heats[i] = s, h
      track.update()
    track.close()
    return scores, heats


def _image_metrics(config, labels, scores):
  """results entries image_auc and the image threshold (F1-max on labelled data, else a nominal quantile)."""
  auc = float(evaluation.roc_auc(labels, scores)) if len(np.unique(labels)) == 2 else None
  return {'image_auc': auc, 'pixel_auc': None,
          'thresholds': evaluation.image_threshold(labels, scores, config.eval.threshold_quantile)}


def _pixel_threshold(sample, with_masks, q, where):
  """(threshold, F1 or None, rule) from the streamed pixel subsample: F1-max where masks mark defects, else
  quantile q of the nominal images' heatmap pixels."""
  heat, gt = sample.arrays()
  if with_masks:
    t, f1 = evaluation.f1_max_threshold(gt.astype(np.int32), heat)
    return float(t), float(f1), f'f1_max over test pixels ({where}, uniform subsample)'
  return float(evaluation.quantile_threshold(heat, q)), None, f'quantile {q} of nominal heatmap pixels ({where})'


def evaluate(config, pipeline, scorer, verbose=False):
  """Scores the whole test split at native resolution, one image at a time: the pixel metrics are streamed
  (`pixel_stream`), so memory holds the scores, a pixel subsample and the heatmaps the figures show, not
  every heatmap. Returns (outputs, results): outputs 'score', 'label', 'index', 'heatmap' ({index: heatmap}
  of `native_figures.figure_indices`), 'reference_pixels', 'native' True; results image_auc, pixel_auc,
  aupro, thresholds, `runs` and `native_resolution`.

  config.eval.pixel_auc_resolution: 'original' compares heatmaps nearest-resized to the masks' files;
  'input' the masks nearest-resized to the heatmaps (the net's input: the image times data.scale). With
  data.scale = 1 both are the same pixels."""
  images, labels = pipeline.test_images, np.asarray(pipeline.test_labels, np.int32)
  masks = pipeline.test_masks_original()
  at_input = config.eval.pixel_auc_resolution == 'input'
  where = 'net input resolution' if at_input else 'native resolution'
  with_masks = masks is not None and any(np.any(m) for m in masks)
  stream = pixel_stream.PixelStream() if config.eval.pixel_auc and with_masks else None
  shapes = [tuple(np.shape(im)[:2]) for im in images]
  metric_shapes = shapes if masks is None or at_input else [np.shape(m) for m in masks]
  sample = pixel_stream.ThresholdSample(PIXEL_SAMPLE / max(1, sum(int(np.prod(s)) for s in metric_shapes)))
  thresholded = set(range(len(images))) if with_masks or not (labels == 0).any() else set(np.flatnonzero(labels == 0))
  plan = figures.reference_plan([h * w for h, w in shapes], labels)
  first = set(native_figures.first_indices(labels))
  scores, kept, ref = np.zeros(len(images)), {}, []
  track = progress.Progress('evaluating test images at native resolution', len(images), 'images', enabled=verbose)
  for i, s, h in scorer.iter_scores(images):
    scores[i] = s
    if i in plan:
      ref.append((i, figures.sample_reference(i, h, plan[i])))
    if i in first:
      kept[i] = h
    m = None if masks is None else masks[i]
    if m is not None and h.shape != m.shape:
      m, h = (evaluation.resize_nearest(m, h.shape), h) if at_input else (m, evaluation.resize_nearest(h, m.shape))
    if stream is not None:
      stream.add(m, h)
    if i in thresholded:
      sample.add(i, h, m if with_masks else None)
    track.update()
  track.close()
  res = _image_metrics(config, labels, scores)
  pixel = {'resolution': config.eval.pixel_auc_resolution}
  if stream is not None:
    (res['pixel_auc'], pixel['pixel_auc_max_binning_error']), (res['aupro'], pixel['aupro_max_binning_error']) = (
        stream.pixel_auc(), stream.aupro())
    pixel.update(histogram_bins=int(stream.hist['pos'].size), key_shift=stream.shift)
  t, f1, rule = _pixel_threshold(sample, with_masks, config.eval.threshold_quantile, where)
  res['thresholds'].update(pixel=t, pixel_rule=rule, **({} if f1 is None else {'pixel_f1': f1}))
  res['runs'] = [{'normal_class': int(pipeline.info.normal_class), 'seed': int(config.seed),
                  'image_auc': res['image_auc'], 'pixel_auc': res['pixel_auc']}]
  res['native_resolution'] = {'patch_size': int(config.data.patch_size), 'scale': float(config.data.scale),
                              'tile': scorer.tile, 'tiles_run': scorer.tiled.tiles_run, 'pixel_metrics': pixel,
                              'image_sizes': sorted({f'{w}x{h}' for h, w in shapes})}
  missing = [i for i in native_figures.figure_indices(labels, scores) if i not in kept]   # re-scored: a few images
  for k, _, h in scorer.iter_scores([images[i] for i in missing]):
    kept[missing[k]] = h
  ref = np.concatenate([r for _, r in sorted(ref, key=lambda x: x[0])]) if ref else np.zeros(0, np.float32)
  outputs = {'score': scores, 'label': labels, 'index': np.arange(len(images)), 'heatmap': kept,
             'reference_pixels': ref, 'native': True}
  return outputs, res

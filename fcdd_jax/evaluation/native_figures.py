"""Heatmap figures of whole images at native resolution (patch-trained runs, issue 27), true aspect ratio.

The paper-style figures (spec §8.3: k = min(6, count) samples picked along the score-sorted list, local or
global normalisation) with each sample shown whole: wide images (width >= 2 x height, e.g. 4096x256 fabric
strips) as a block of three rows (image, heatmap, ground truth) per sample, samples stacked below each other;
other images side by side as `figures.grid` does. Every panel keeps its image's aspect ratio: the whole figure
is shrunk by one integer factor (nearest) so that it is at most MAX_WIDTH pixels wide; images narrower than
the widest are padded (black) on the right, never stretched.

Files: heatmaps_paper_{local,global}_lbl{0,1}.png, test_samples.png, overlays/test_<index>_label<l>.png.
"""
import os

import numpy as np

from fcdd_jax.data import image_io
from fcdd_jax.evaluation import figures

MAX_WIDTH = 2048


def rgb(img):
  img = np.asarray(img)
  if img.ndim == 2:
    img = img[..., None]
  return np.repeat(img, 3, -1) if img.shape[-1] == 1 else img[..., :3]


def _colour(h01):
  import matplotlib  # pylint: disable=g-import-not-at-top
  return (matplotlib.colormaps['jet'](np.clip(h01, 0, 1))[..., :3] * 255).round().astype(np.uint8)


def sample_block(image, heat01, gt=None):
  """uint8 [rows, W, 3]: the image, its heatmap (jet) and its ground truth, stacked vertically, 2 px apart."""
  parts = [rgb(image), _colour(heat01)]
  if gt is not None:
    parts.append(np.repeat(((np.asarray(gt) > 0) * 255).astype(np.uint8)[..., None], 3, -1))
  sep = np.zeros((2, parts[0].shape[1], 3), np.uint8)
  out = []
  for p in parts:
    out += [p, sep]
  return np.concatenate(out[:-1], 0)


def layout(images, heats01, gts=None, max_width=MAX_WIDTH):
  """The figure of samples at their true aspect ratio (see the module doc)."""
  blocks = [sample_block(im, h, None if gts is None else gts[i]) for i, (im, h) in enumerate(zip(images, heats01))]
  wide = all(b.shape[1] >= 2 * np.shape(im)[0] for b, im in zip(blocks, images))
  axis = 0 if wide else 1
  other = 1 - axis
  size = max(b.shape[other] for b in blocks)
  padded = []
  for b in blocks:
    pad = [(0, 0), (0, 0), (0, 0)]
    pad[other] = (0, size - b.shape[other])
    padded.append(np.pad(b, pad))
    sep_shape = [0, 0, 3]
    sep_shape[axis], sep_shape[other] = 6, size
    padded.append(np.full(sep_shape, 255, np.uint8))
  fig = np.concatenate(padded[:-1], axis)
  f = -(-fig.shape[1] // max_width)
  return fig[::f, ::f] if f > 1 else fig


def first_indices(labels, n=3):
  """The first n nominal and first n anomalous test images (test_samples.png and the overlays)."""
  labels = np.asarray(labels)
  return [int(i) for i in np.flatnonzero(labels == 0)[:n]] + [int(i) for i in np.flatnonzero(labels == 1)[:n]]


def paper_rows(labels, scores, lab):
  idx = np.flatnonzero(np.asarray(labels) == lab)
  return [int(idx[i]) for i in figures.paper_indices(np.asarray(scores)[idx])] if len(idx) else []


def figure_indices(labels, scores):
  """Every test image whose heatmap `write_figures` shows."""
  return sorted(set(first_indices(labels)) | set(paper_rows(labels, scores, 0)) | set(paper_rows(labels, scores, 1)))


def write_figures(workdir, config, images, outputs, masks=None):
  """The native-resolution figures of a run's test outputs (`native_eval.evaluate`: 'heatmap' holds the
  heatmaps of `figure_indices` by image index, 'reference_pixels' the global normalisation's pixels)."""
  q = float(config.eval.quantile)
  labels = np.asarray(outputs['label'], np.int32)
  scores = np.asarray(outputs['score'])
  heats = outputs['heatmap']
  if not len(labels):
    return
  ref = figures.global_scale(outputs['reference_pixels'], q)
  gts = None
  if masks is not None and all(heats[i].shape == masks[i].shape for i in heats):
    gts = masks
  for lab in (0, 1):
    rows = paper_rows(labels, scores, lab)
    if not rows:
      continue
    g = None if gts is None else [gts[r] for r in rows]
    ims = [images[r] for r in rows]
    image_io.write_png(layout(ims, [figures.local_norm(heats[r], q) for r in rows], g),
                       os.path.join(workdir, f'heatmaps_paper_local_lbl{lab}.png'))
    image_io.write_png(layout(ims, [figures.global_norm(heats[r], ref) for r in rows], g),
                       os.path.join(workdir, f'heatmaps_paper_global_lbl{lab}.png'))
  first = first_indices(labels)
  image_io.write_png(layout([images[r] for r in first], [figures.local_norm(heats[r], q) for r in first],
                            None if gts is None else [gts[r] for r in first]),
                     os.path.join(workdir, 'test_samples.png'))
  os.makedirs(os.path.join(workdir, 'overlays'), exist_ok=True)
  for r in first:
    image_io.write_png(figures.overlay(rgb(images[r]), figures.global_norm(heats[r], ref)),
                       os.path.join(workdir, 'overlays', f'test_{r:05d}_label{labels[r]}.png'))

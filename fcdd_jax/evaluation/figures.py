"""Explanation figures (PNG) written into the workdir (spec §8.3).

* `test_samples.png`: first nominal and anomalous test samples: inputs, heatmaps, ground truth.
* `heatmaps_global.png`: row groups (inputs, heatmaps, [GT], separator) for the first m label-0 samples,
  the first m label-1 samples, the m/2 lowest- and m/2 highest-scored label-0 samples, same for label 1;
  "global" normalisation (balanced reference set, `config.eval.quantile`; the reference's maps are the
  displayed upsampled ones, or the low-res ones as the reference code has it: `eval.figure_reference`).
* `heatmaps_paper_{local,global}_lbl{0,1}.png`: k = min(6, count) samples picked along the score-sorted
  list as the reference does; local (per image) or global normalisation.
* `train_heatmaps_global.png` when train-split outputs are given; `overlays/` with heatmaps over inputs.
Inputs are min-max normalised per image for display; GT maps are shown as they are.
"""
import os

import numpy as np

from fcdd_jax.data import image_io

THUMBNAIL = 128   # panel height in the many-panel figures (heatmaps_global, train_heatmaps_global)
REFERENCE_PIXELS = 1_000_000   # pixels of the balanced reference set used by the global normalisation


def _to_uint8_image(x):
  """Display form: uint8 RGB images pass unchanged; anything else is min-max stretched per image."""
  if isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 3 and x.shape[-1] == 3:
    return x
  x = np.asarray(x, np.float32)
  lo, hi = float(x.min()), float(x.max())
  x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
  if x.ndim == 2 or x.shape[-1] == 1:
    x = np.repeat(x.reshape(x.shape[:2] + (1,)), 3, -1)
  return (x * 255).round().astype(np.uint8)


def _jet(x):
  import matplotlib  # pylint: disable=g-import-not-at-top
  return (matplotlib.colormaps['jet'](np.clip(x, 0, 1))[..., :3] * 255).round().astype(np.uint8)


def _qtile(x, q):
  """The int(q·(n−1))-th smallest value (a partial sort: whole reference sets of upsampled maps are large)."""
  x = np.asarray(x, np.float64).ravel()
  if not x.size:
    return 1.0
  k = int(q * (x.size - 1))
  return float(np.partition(x, k)[k])


def local_norm(h, q):
  """Per image: subtract its min, divide by its q-quantile, clamp to [0, 1] (spec §8.3)."""
  h = np.asarray(h, np.float64) - float(np.min(h))
  qq = _qtile(h, q)
  return np.clip(h / qq if qq > 0 else h, 0, 1)


def reference_plan(sizes, labels, seed=0):
  """{image index: share of its pixels to draw} for the balanced reference set of the global normalisation
  (spec §8.3: the majority label subsampled to the minority count, drawn with `seed`), at most
  REFERENCE_PIXELS pixels in all (a quantile estimate; whole test sets of large maps would not fit).
  `sizes`: pixels per image."""
  labels = np.asarray(labels)
  idx0, idx1 = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
  rng = np.random.default_rng(seed)
  if len(idx0) and len(idx1):
    n = min(len(idx0), len(idx1))
    idx = np.concatenate([rng.choice(idx0, n, replace=False), rng.choice(idx1, n, replace=False)])
  else:
    idx = np.arange(len(labels))
  take = min(1.0, REFERENCE_PIXELS / max(1, sum(int(sizes[i]) for i in idx)))
  return {int(i): take for i in idx}


def sample_reference(index, heat, take, seed=0):
  """The reference pixels drawn from image `index`'s heatmap (each kept with probability `take`, from a
  generator seeded by (seed, index): the same whatever order the images are scored in)."""
  flat = np.asarray(heat).reshape(-1)
  return flat if take >= 1 else flat[np.random.default_rng([seed, int(index)]).random(flat.size) < take]


def reference_pixels(heats, labels, seed=0):
  """The reference pixels of heatmaps held in memory (`reference_plan`, `sample_reference`)."""
  plan = reference_plan([np.size(h) for h in heats], labels, seed)
  return np.concatenate([sample_reference(i, heats[i], take, seed) for i, take in sorted(plan.items())])


def global_scale(reference, q):
  """(offset, scale) of the global normalisation (spec §8.3), computed once for every displayed map: the
  reference's minimum and the q-quantile of (reference − minimum)."""
  ref = np.asarray(reference, np.float64).ravel()
  lo = float(ref.min()) if ref.size else 0.0
  qq = _qtile(ref - lo, q)
  return lo, (qq if qq > 0 else 1.0)


def global_norm(h, scale):
  """A heatmap in [0, 1] by `global_scale`'s (offset, scale), clamped."""
  lo, s = scale
  return np.clip((np.asarray(h, np.float64) - lo) / s, 0, 1)


def overlay(image_uint8, heatmap01, alpha=0.5):
  """Heatmap (normalised to [0,1]) in jet over an RGB/gray uint8 image of the same size."""
  img = _to_uint8_image(image_uint8) if image_uint8.dtype != np.uint8 else image_uint8
  if img.ndim == 2 or img.shape[-1] == 1:
    img = np.repeat(img.reshape(img.shape[:2] + (1,)), 3, -1)
  hm = _jet(heatmap01)
  return (img.astype(np.float32) * (1 - alpha) + hm.astype(np.float32) * alpha).round().astype(np.uint8)


def thumbnail(x, size):
  """Nearest resize of an image or map to at most `size` pixels high (large inputs in many-panel figures)."""
  x = np.asarray(x)
  if x.shape[0] <= size:
    return x
  h, w = size, max(1, round(x.shape[1] * size / x.shape[0]))
  ys = (np.arange(h) * x.shape[0] / h).astype(np.int64)
  xs = (np.arange(w) * x.shape[1] / w).astype(np.int64)
  return x[ys][:, xs]


def grid(images, heatmaps01, gtmaps=None, max_size=None):
  """Rows: inputs, heatmaps (already normalised to [0,1]), [ground truth]; every panel of a column has the
  same height and width (ValueError otherwise). `max_size`: panels are shrunk to at most that height."""
  for i, (im, h) in enumerate(zip(images, heatmaps01)):
    g = None if gtmaps is None else np.shape(gtmaps[i])
    if tuple(np.shape(im)[:2]) != tuple(np.shape(h)[:2]) or (g is not None and tuple(g[:2]) != tuple(np.shape(h)[:2])):
      raise ValueError(f'figure panel {i}: image {np.shape(im)[:2]}, heatmap {np.shape(h)[:2]}'
                       + (f', ground truth {g[:2]}' if g is not None else '') + ' differ in size')
  if max_size:
    images = [thumbnail(_to_uint8_image(im), max_size) for im in images]
    heatmaps01 = [thumbnail(h, max_size) for h in heatmaps01]
    gtmaps = None if gtmaps is None else [thumbnail(g, max_size) for g in gtmaps]
  rows = [np.concatenate([_to_uint8_image(im) for im in images], 1),
          np.concatenate([_jet(h) for h in heatmaps01], 1)]
  if gtmaps is not None:
    rows.append(np.concatenate([np.repeat(((np.asarray(g) > 0.5) * 255).astype(np.uint8)[..., None], 3, -1)
                                for g in gtmaps], 1))
  return np.concatenate(rows, 0)


def paper_indices(scores, k=6):
  """The reference's picks along the score-sorted list (spec §8.3)."""
  order = np.argsort(scores, kind='stable')
  n = len(order)
  k = min(k, n)
  if k == 0:
    return []
  if k == 1:
    return [int(order[0])]
  chunks = np.array_split(order, k)
  picks = []
  for i, ch in enumerate(chunks):
    if i == 0:
      picks.append(int(ch[0]))
    elif i == k - 1:
      picks.append(int(ch[-1]))
    else:
      picks.append(int(ch[min(len(ch) - 1, int(i / (k - 1) * len(ch)))]))
  return picks


def _save(arr, path, min_height=128):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = Image.fromarray(arr)
  scale = max(1, min_height // arr.shape[0] * 2) if arr.shape[0] < min_height else 1
  if scale > 1:
    img = img.resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)
  image_io.write_png(img, path)


def _display(pipeline, split, indices, fallback):
  if pipeline is not None and hasattr(pipeline, 'display_images'):
    return list(pipeline.display_images(split, indices))
  return [fallback[i] for i in indices] if fallback is not None else None


def global_figure(images, heatmaps, labels, scores, scale, gtmaps=None, m=20):
  labels = np.asarray(labels)
  counts = [int((labels == 0).sum()), int((labels == 1).sum())]
  m = min(m, min(c for c in counts if c > 0) if any(counts) else 0)
  m = max(2, m - m % 2)
  groups = []
  for lab in (0, 1):
    idx = np.flatnonzero(labels == lab)
    if len(idx):
      groups.append(idx[:m])
  for lab in (0, 1):
    idx = np.flatnonzero(labels == lab)
    if len(idx):
      srt = idx[np.argsort(scores[idx], kind='stable')]
      groups.append(np.concatenate([srt[:m // 2], srt[-(m // 2):]]))
  blocks = []
  for g in groups:
    g = list(g)
    block = grid([images[i] for i in g], [global_norm(heatmaps[i], scale) for i in g],
                 [gtmaps[i] for i in g] if gtmaps is not None else None, max_size=THUMBNAIL)
    blocks.append(block)
  width = max(b.shape[1] for b in blocks)
  sep = np.zeros((2, width, 3), np.uint8)
  out = []
  for b in blocks:
    out += [np.pad(b, ((0, 0), (0, width - b.shape[1]), (0, 0))), sep]
  return np.concatenate(out[:-1], 0)


def write_run_figures(workdir, config, pipeline, outputs, train_outputs=None):
  """All test-set figures of a run (and train heatmaps when `train_outputs` is given)."""
  q = float(config.eval.quantile)
  n = len(outputs['score'])
  if not n:
    return
  labels = outputs['label'].astype(np.int32)
  scores = np.asarray(outputs['score'])
  heat = np.asarray(outputs['heatmap'])
  if heat.ndim != 3:
    return
  gts = outputs.get('gtmap')
  samples = outputs.get('samples') or {}
  # display images for every picked index (via the pipeline, else the kept normalised inputs)
  needed = set()
  # the global reference: the displayed (upsampled) maps themselves, or the reference's low-res maps (spec
  # §8.3; `eval.figure_reference=lowres`): the Gaussian upsampling multiplies a map by ~2.6 inside the image
  # (σ 10, stride 8), so nearly every displayed pixel lies above the low-res 0.97 quantile: saturated figures
  lowres = config.eval.get('figure_reference', 'upsampled') == 'lowres' and 'heatmap_lowres' in outputs
  ref = global_scale(reference_pixels(outputs['heatmap_lowres'] if lowres else heat, labels), q)
  picks = {}
  for lab in (0, 1):
    idx = np.flatnonzero(labels == lab)
    if len(idx):
      picks[lab] = [int(idx[i]) for i in paper_indices(scores[idx])]
      needed |= set(picks[lab])
  glob_fig_rows = set(range(min(n, 200)))
  index = outputs['index'] if 'index' in outputs else np.arange(n)
  pos_samples = {int(ix): im for ix, im in samples.items()}
  def images_for(rows):
    disp = _display(pipeline, 'test', [int(index[r]) for r in rows], None)
    if disp is None:
      disp = [pos_samples.get(int(index[r]), np.zeros(heat.shape[1:] + (3,))) for r in rows]
    return disp
  # paper figures
  for lab, rows in picks.items():
    ims = images_for(rows)
    g = [gts[r] for r in rows] if gts is not None else None
    _save(grid(ims, [local_norm(heat[r], q) for r in rows], g),
          os.path.join(workdir, f'heatmaps_paper_local_lbl{lab}.png'))
    _save(grid(ims, [global_norm(heat[r], ref) for r in rows], g),
          os.path.join(workdir, f'heatmaps_paper_global_lbl{lab}.png'))
  # global figure over the first rows + the extremes
  rows = sorted(glob_fig_rows | set(np.argsort(scores)[:10].tolist()) | set(np.argsort(scores)[-10:].tolist()))
  ims = dict(zip(rows, images_for(rows)))
  allims = [ims.get(r, np.zeros(heat.shape[1:] + (3,), np.uint8)) for r in range(n)] if n <= 4000 else None
  if allims is not None:
    sub = np.asarray(rows)
    fig = global_figure([ims[r] for r in rows], heat[sub], labels[sub], scores[sub], ref,
                        gts[sub] if gts is not None else None)
    _save(fig, os.path.join(workdir, 'heatmaps_global.png'))
  # test_samples.png and overlays
  first = [int(i) for i in np.flatnonzero(labels == 0)[:5]] + [int(i) for i in np.flatnonzero(labels == 1)[:5]]
  ims = images_for(first)
  _save(grid(ims, [local_norm(heat[r], q) for r in first], [gts[r] for r in first] if gts is not None else None),
        os.path.join(workdir, 'test_samples.png'))
  os.makedirs(os.path.join(workdir, 'overlays'), exist_ok=True)
  for r, im in zip(first, ims):
    _save(overlay(np.asarray(im), global_norm(heat[r], ref)),
          os.path.join(workdir, 'overlays', f'test_{int(index[r]):05d}_label{labels[r]}.png'))
  if train_outputs is not None and len(train_outputs.get('score', [])):
    th = np.asarray(train_outputs['heatmap'])
    tl = train_outputs['label'].astype(np.int32)
    rows = list(range(min(len(th), 20)))
    tims = _display(pipeline, 'train', [int(train_outputs['index'][r]) for r in rows], None) or \
        [np.zeros(th.shape[1:] + (3,), np.uint8) for _ in rows]
    tref = global_scale(reference_pixels(train_outputs['heatmap_lowres'] if lowres and 'heatmap_lowres' in
                                         train_outputs else th, tl), q)
    _save(grid(tims, [global_norm(th[r], tref) for r in rows], max_size=THUMBNAIL),
          os.path.join(workdir, 'train_heatmaps_global.png'))

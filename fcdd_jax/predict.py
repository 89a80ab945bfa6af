"""Score new images with a trained run: anomaly scores, heatmap overlays and masks.

  python -m fcdd_jax.predict --workdir RUN --input PATH [--input PATH ...] --output DIR [--threshold T]

Uses the run's config.json, preprocessing.json and latest checkpoint. Writes DIR/scores.csv
(`path,score,anomalous`; `anomalous` empty without a threshold), DIR/<stem>_overlay.png per image and
DIR/<stem>_mask.png when a pixel threshold is known. Score = mean of the low-resolution pseudo-Huber map
(spec §11.7); heatmaps are upsampled with the run's gauss_std. Threshold: --threshold, else the image
threshold stored in RUN/results.json, else none. Unreadable files are reported on stderr and get an empty
score; the rest are still scored.
"""
import argparse
import csv
import json
import os
import sys

import numpy as np


class Predictor:
  """Loads a run once; `predict(images)` scores uint8 images of any size (gray/RGB/RGBA)."""

  def __init__(self, workdir, batch_size=16):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import ml_collections  # pylint: disable=g-import-not-at-top
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    from fcdd_jax import input_pipeline, losses, models, receptive  # pylint: disable=g-import-not-at-top
    self.workdir = workdir
    for f in ('config.json', 'preprocessing.json'):
      if not os.path.exists(os.path.join(workdir, f)):
        raise FileNotFoundError(f'{os.path.join(workdir, f)} not found: --workdir must be a finished fcdd_jax run')
    with open(os.path.join(workdir, 'config.json')) as f:
      self.config = ml_collections.ConfigDict(json.load(f))
    with open(os.path.join(workdir, 'preprocessing.json')) as f:
      self.preprocessing = json.load(f)
    name = self.config.model.name
    if models.objective_of(name) != 'fcdd':
      raise ValueError(f'prediction supports FCDD nets; this run uses {name}')
    self.transform = input_pipeline.make_test_transform(self.preprocessing)
    self.size = tuple(self.preprocessing['input_size'])
    self.channels = int(self.preprocessing['channels'])
    ckdir = os.path.join(workdir, 'checkpoints')
    mngr = ocp.CheckpointManager(ckdir, item_names=('state', 'meta'))
    step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {ckdir}')
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    mngr.close()
    state = restored['state']
    self.variables = {'params': state['params'], 'batch_stats': state.get('batch_stats', {})}
    net = models.create(name, bias=self.config.model.bias, torch_init=self.config.model.torch_init,
                        bn_unbiased_var=self.config.model.bn_unbiased_var, frozen_bn=self.config.model.frozen_bn)
    std = self.config.loss.gauss_std if self.config.loss.gauss_std > 0 else None
    rec = net.reception
    def fn(variables, x):
      phi = net.apply(variables, x, train=False)
      low = losses.fcdd_heatmaps(phi)
      return losses.fcdd_scores(phi), receptive.upsample(low, rec, self.size, std)
    self._fn = jax.jit(fn)
    self.batch_size = batch_size
    self.thresholds = {}
    rpath = os.path.join(workdir, 'results.json')
    if os.path.exists(rpath):
      with open(rpath) as f:
        self.thresholds = json.load(f).get('thresholds') or {}
    self._jnp = jnp

  def predict(self, images):
    """images: list of uint8 arrays -> (scores [n], heatmaps [n,H,W] at net input size)."""
    xs = np.stack([self.transform(im) for im in images]) if images else np.zeros((0,) + self.size + (self.channels,))
    scores, maps = [], []
    b = self.batch_size
    for i in range(0, len(xs), b):
      chunk = xs[i:i + b]
      pad = b - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      s, h = self._fn(self.variables, self._jnp.asarray(chunk))
      scores.append(np.asarray(s)[:b - pad])
      maps.append(np.asarray(h)[:b - pad])
    if not scores:
      return np.zeros(0), np.zeros((0,) + self.size)
    return np.concatenate(scores), np.concatenate(maps)


def collect(paths):
  from fcdd_jax.data import sources  # pylint: disable=g-import-not-at-top
  out = []
  for p in paths:
    if os.path.isdir(p):
      out += sources.list_images(p)
    elif os.path.exists(p):
      out.append(p)
    else:
      raise FileNotFoundError(f'--input {p}: no such file or directory')
  return out


def _stems(files):
  names, seen = {}, {}
  for f in files:
    stem = os.path.splitext(os.path.basename(f))[0]
    seen[stem] = seen.get(stem, 0) + 1
  for f in files:
    stem = os.path.splitext(os.path.basename(f))[0]
    if seen[stem] > 1:
      stem = f'{os.path.basename(os.path.dirname(os.path.abspath(f)))}_{stem}'
    base, k = stem, 1
    while stem in names.values():
      k += 1
      stem = f'{base}_{k}'
    names[f] = stem
  return names


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--workdir', required=True)
  p.add_argument('--input', action='append', required=True)
  p.add_argument('--output', required=True)
  p.add_argument('--threshold', type=float, default=None)
  p.add_argument('--batch_size', type=int, default=16)
  a = p.parse_args(argv)
  from fcdd_jax import figures, input_pipeline  # pylint: disable=g-import-not-at-top
  from fcdd_jax.data import sources  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    files = collect(a.input)
    pred = Predictor(a.workdir, a.batch_size)
  except (ValueError, FileNotFoundError) as e:
    print(f'fcdd_jax.predict: error: {e}', file=sys.stderr)
    return 2
  os.makedirs(a.output, exist_ok=True)
  threshold = a.threshold if a.threshold is not None else pred.thresholds.get('image')
  pix_t = pred.thresholds.get('pixel')
  stems = _stems(files)
  rows, good, imgs = [], [], []
  for f in files:
    try:
      imgs.append(sources.load_image(f))
      good.append(f)
    except ValueError as e:
      print(f'fcdd_jax.predict: {e}', file=sys.stderr)
      rows.append((f, None))
  scores, maps = pred.predict(imgs)
  for f, im, s, h in zip(good, imgs, scores, maps):
    rows.append((f, float(s)))
    disp = input_pipeline.resize_u8(input_pipeline.to_rgb_or_gray(im, 3), pred.size)
    norm = np.clip(h / (2 * pix_t), 0, 1) if pix_t else figures.local_norm(h, 0.97)
    Image.fromarray(figures.overlay(disp, norm)).save(os.path.join(a.output, f'{stems[f]}_overlay.png'))
    if pix_t:
      Image.fromarray(((h >= pix_t) * 255).astype(np.uint8)).save(os.path.join(a.output, f'{stems[f]}_mask.png'))
  order = {f: i for i, f in enumerate(files)}
  rows.sort(key=lambda r: order[r[0]])
  with open(os.path.join(a.output, 'scores.csv'), 'w', newline='') as fh:
    w = csv.writer(fh)
    w.writerow(['path', 'score', 'anomalous'])
    for f, s in rows:
      anom = '' if (s is None or threshold is None) else int(s >= threshold)
      w.writerow([f, '' if s is None else f'{s:.6g}', anom])
  print(f'scored {len(good)} of {len(files)} images -> {os.path.join(a.output, "scores.csv")}'
        + (f' (threshold {threshold:.6g})' if threshold is not None else ' (no threshold)'))
  return 0 if good or not files else 1


if __name__ == '__main__':
  sys.exit(main())

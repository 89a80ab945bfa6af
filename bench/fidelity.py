"""Fidelity benchmark (issue 13): detection quality on real and masked defect data, trained from scratch.

  python -m bench.fidelity [--seeds 0,1,2] [--epochs 5] [--batch 32] [--net FCDD_CNN224_VGG_NOPT]
                           [--dtype float32|bfloat16] [--sets bottle,bottle_pasted] [--bottle DIR]
                           [--workdir DIR] [--steps N] [--set FIELD=VALUE ...]

`configs/custom.py` as users get it (its recipe: confetti with its own maps for the GT-map loss, aug1, Adam
for a net from scratch, lambda 0.985, sigma 10, precise BatchNorm, image score = heatmap maximum; the
authors' custom runner with `--set` overrides, see the module's README section) with FCDD_CNN224_VGG_NOPT
from scratch, global batch 32, on
* `bottle`: the shared MVTec bottle (256², real defects: broken_large/small, contamination; image labels only)
  -> image AUC;
* `bottle_pasted`: a masked set built here from the bottle's nominal images: 149 training images, test = 50
  nominal (test/good + 30 held-out) and 30 held-out images with one synthetic defect pasted in (a patch of
  another bottle, a stain or a scratch; masks kept in ground_truth/) -> image and pixel AUC.
  Written once to <workdir or $XDG_CACHE_HOME/fcdd_jax>/bench_fidelity/, never into the data folder.
--bottle defaults to ../shared/data/mvtec_bottle_256/bottle next to the repository (or $FCDD_SHARED_DATA/
mvtec_bottle_256/bottle); pass it when running from a copy. Run from the command line, the process uses the
allocator `fcdd_jax.main` uses (mimalloc on CPU hosts); all runs share one process, so a run's `peak_rss_gb`
is the process's peak so far (the first run's is its own).
Prints one JSON line per run (AUCs, training img/s, peak RSS) and one per set with image/pixel AUC mean ± std over the seeds. `--set` passes
config overrides (e.g. `--set data.exact_half=True`) to compare variants; `--steps` replaces --epochs (smoke
tests).
"""
import argparse
import ast
import hashlib
import os
import shutil
import statistics
import tempfile

import numpy as np

from bench import common

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOTTLE = os.path.join(os.environ.get('FCDD_SHARED_DATA', os.path.join(os.path.dirname(_REPO), 'shared', 'data')),
                      'mvtec_bottle_256', 'bottle')
PASTED_VERSION = 'bottle_pasted-v2'


# ----------------------------------------------------------------------------------------------------
# The masked set

def _defect(rng, img, donors):
  """One synthetic defect on uint8 [H,W,3] `img` inside the bottle's central disc: (image, bool mask)."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  h, w = img.shape[:2]
  r = rng.uniform(0, 0.33 * min(h, w))
  t = rng.uniform(0, 2 * np.pi)
  cy, cx = h / 2 + r * np.sin(t), w / 2 + r * np.cos(t)
  out = img.astype(np.float64)
  mask_img = Image.new('L', (w, h), 0)
  draw = ImageDraw.Draw(mask_img)
  kind = ('patch', 'stain', 'scratch')[rng.integers(3)]
  if kind == 'patch':     # a square from another bottle image, rotated by a multiple of 90°
    s = int(rng.uniform(0.08, 0.18) * min(h, w))
    donor = donors[rng.integers(len(donors))]
    y0, x0 = rng.integers(0, h - s), rng.integers(0, w - s)
    patch = np.rot90(donor[y0:y0 + s, x0:x0 + s], rng.integers(1, 4)).astype(np.float64)
    ty, tx = int(np.clip(cy - s / 2, 0, h - s)), int(np.clip(cx - s / 2, 0, w - s))
    draw.rectangle([tx, ty, tx + s - 1, ty + s - 1], fill=255)
    mask = np.asarray(mask_img) > 0
    out[ty:ty + s, tx:tx + s] = patch
  elif kind == 'stain':   # an ellipse, darkened or tinted (partly transparent)
    a, b = rng.uniform(0.03, 0.09, 2) * min(h, w)
    draw.ellipse([cx - a, cy - b, cx + a, cy + b], fill=255)
    mask = np.asarray(mask_img) > 0
    if rng.random() < 0.5:
      out[mask] *= rng.uniform(0.45, 0.8)
    else:
      alpha = rng.uniform(0.3, 0.6)
      out[mask] = (1 - alpha) * out[mask] + alpha * rng.integers(0, 256, 3)
  else:                   # a scratch: a polyline of 2-3 segments, 1-4 px wide, darker or brighter than around
    pts = [(cx, cy)]
    for _ in range(rng.integers(2, 4)):
      ang, ln = rng.uniform(0, 2 * np.pi), rng.uniform(0.04, 0.12) * min(h, w)
      pts.append((pts[-1][0] + ln * np.cos(ang), pts[-1][1] + ln * np.sin(ang)))
    draw.line(pts, fill=255, width=int(rng.integers(1, 5)))
    mask = np.asarray(mask_img) > 0
    out[mask] = out[mask].mean() + rng.choice([-1, 1]) * rng.uniform(50, 110)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask


def build_pasted(src, base, seed=0):
  """The masked bottle set in MVTec layout under `base` (built once; reused while its version matches)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from fcdd_jax.data import image_io  # pylint: disable=g-import-not-at-top
  train = image_io.list_images(os.path.join(src, 'train', 'good'))
  good = image_io.list_images(os.path.join(src, 'test', 'good'))
  if len(train) < 61 or not good:
    raise ValueError(f'{src} needs >= 61 train/good and some test/good images for the masked set')
  key = hashlib.sha1(repr((PASTED_VERSION, seed, os.path.abspath(src), len(train), len(good))).encode()).hexdigest()
  root = os.path.join(base, f'{PASTED_VERSION}-{key[:10]}')
  os.makedirs(base, exist_ok=True)
  if os.path.exists(os.path.join(root, 'DONE')):
    return root
  tmp = tempfile.mkdtemp(prefix='.building-', dir=base)
  keep, held = train[:-60], train[-60:]
  load = lambda p: np.asarray(Image.open(p).convert('RGB'))
  def save(arr, *parts):
    path = os.path.join(tmp, *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, compress_level=1)   # fast; lossless all the same
  for i, p in enumerate(keep):
    save(load(p), 'train', 'good', f'{i:03d}.png')
  for i, p in enumerate(good + held[:30]):
    save(load(p), 'test', 'good', f'{i:03d}.png')
  donors = [load(p) for p in keep[:20]]
  rng = np.random.default_rng(seed)
  for i, p in enumerate(held[30:]):
    img, mask = _defect(rng, load(p), donors)
    save(img, 'test', 'pasted', f'{i:03d}.png')
    save((mask * 255).astype(np.uint8), 'ground_truth', 'pasted', f'{i:03d}_mask.png')
  with open(os.path.join(tmp, 'DONE'), 'w') as f:
    f.write(PASTED_VERSION + '\n')
  try:
    os.rename(tmp, root)
  except OSError:        # built concurrently by another process: keep theirs
    shutil.rmtree(tmp, ignore_errors=True)
  return root


# ----------------------------------------------------------------------------------------------------
# Runs

def _override(c, item):
  field, _, text = item.partition('=')
  node = c
  *path, leaf = field.split('.')
  for p in path:
    node = node[p]
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  node[leaf] = value


def run_one(root, seed, a, workdir):
  from bench import train_loop  # pylint: disable=g-import-not-at-top
  from fcdd_jax import train  # pylint: disable=g-import-not-at-top
  c = train_loop.custom_config()
  c.data.root = root
  c.data.cache_dir = os.path.join(workdir, 'cache')
  c.model.name = a.net
  c.model.dtype = a.dtype
  c.batch_size = a.batch
  c.seed = seed
  c.num_epochs = a.epochs
  c.num_train_steps = a.steps if a.steps > 0 else -1
  c.log_every_steps = 10
  c.checkpoint_every_steps = 1 << 30
  c.keep_checkpoints = 1
  c.eval.train_heatmaps = False
  c.eval.num_figure_samples = 0
  for item in a.set:
    _override(c, item)
  return train.train_and_evaluate(c, os.path.join(workdir, f'run-{os.path.basename(root)}-seed{seed}'))


def _mean_std(xs):
  xs = [x for x in xs if x is not None]
  if not xs:
    return None, None
  return round(statistics.mean(xs), 4), round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--seeds', default='0,1,2')
  p.add_argument('--epochs', type=int, default=5)
  p.add_argument('--steps', type=int, default=0, help='> 0: train this many steps instead of --epochs')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--net', default='FCDD_CNN224_VGG_NOPT')
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  p.add_argument('--sets', default='bottle,bottle_pasted')
  p.add_argument('--bottle', default=BOTTLE, help='MVTec-layout bottle folder')
  p.add_argument('--workdir', default='', help='runs and the masked set (default: a temporary directory; the '
                 'masked set then goes to $XDG_CACHE_HOME/fcdd_jax/bench_fidelity)')
  p.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE', help='config override')
  a = p.parse_args(argv)
  seeds = [int(s) for s in a.seeds.split(',') if s.strip()]
  sets = [s for s in a.sets.split(',') if s]
  unknown = set(sets) - {'bottle', 'bottle_pasted'}
  if unknown:
    p.error(f'--sets: unknown {sorted(unknown)}; allowed: bottle, bottle_pasted')
  if not os.path.isdir(a.bottle):
    p.error(f'--bottle={a.bottle} is not a directory')
  from fcdd_jax.data import image_io  # pylint: disable=g-import-not-at-top
  workdir = a.workdir or tempfile.mkdtemp(prefix='fcdd_fidelity-')
  base = os.path.join(a.workdir or image_io.default_cache_root(), 'bench_fidelity')
  os.makedirs(base, exist_ok=True)
  roots = {'bottle': a.bottle}
  if 'bottle_pasted' in sets:
    roots['bottle_pasted'] = build_pasted(a.bottle, base)
  budget = {'steps': a.steps} if a.steps > 0 else {'epochs': a.epochs}
  summary = []
  try:
    for name in sets:
      res = []
      for seed in seeds:
        r = run_one(roots[name], seed, a, workdir)
        res.append(r)
        common.emit(impl='fidelity', set=name, seed=seed, net=a.net, batch=a.batch, **budget,
                    dtype=a.dtype, image_auc=r['image_auc'], pixel_auc=r['pixel_auc'],
                    train_seconds=r.get('train_seconds'), img_per_s=r.get('train_images_per_second'),
                    peak_rss_gb=(round(r['peak_rss_bytes'] / 2**30, 2) if r.get('peak_rss_bytes') else None),
                    overrides=a.set, device_kind=common.cpu_kind(), load=common.load_avg())
      img, pix = _mean_std([r['image_auc'] for r in res]), _mean_std([r['pixel_auc'] for r in res])
      summary.append(common.emit(impl='fidelity_summary', set=name, seeds=seeds, net=a.net, batch=a.batch,
                                 dtype=a.dtype, **budget, image_auc_mean=img[0], image_auc_std=img[1], pixel_auc_mean=pix[0],
                                 pixel_auc_std=pix[1], overrides=a.set, device_kind=common.cpu_kind()))
  finally:
    if not a.workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  for s in summary:
    fmt = lambda m, sd: '-' if m is None else f'{m:.3f} ± {sd:.3f}'
    print(f"{s['set']:>14}: image AUC {fmt(s['image_auc_mean'], s['image_auc_std'])}  "
          f"pixel AUC {fmt(s['pixel_auc_mean'], s['pixel_auc_std'])}  ({len(seeds)} seeds)", flush=True)
  return summary


if __name__ == '__main__':
  from fcdd_jax import memory  # pylint: disable=g-import-not-at-top
  memory.exec_with_allocator('auto')   # as fcdd_jax.main runs (re-executes this command once)
  main()

"""Large images at native resolution (issue 27): metrics of trained runs at the masks' native resolution, the
strips figure, and one 8192x8192 file scored by `fcdd_jax.predict`.

  python -m bench.large_images metrics RUN [RUN ...]      # per run: image AUC, pixel AUC, AUPRO (native masks)
  python -m bench.large_images figure --resize RUN --patch RUN --out docs/figures/large_images_strips.png
  python -m bench.large_images big_image --out big.png     # an 8192x8192 gray fabric image from the strips

`metrics` scores every test file of the run's data.root with the run's predictor: a patch-trained run at
native resolution (the very computation of its evaluation, so its numbers equal results.json), a resized run
through its evaluation transform (`predict --mode crop`: squashed to 224², as its evaluation) with each
heatmap nearest-resized to the file's own size, so both kinds are judged on the same native-resolution
masks (results.json of a resized custom run has its pixel AUC at the masks squashed to a 256² square, the
reference's rule). It also gives a size-matched image AUC (`halves`): the nominal 4096-wide strips cut into
2048-wide halves, the size of the defect strips. Prints one JSON line per run.
"""
import argparse
import json
import os
import sys

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.environ.get('FCDD_SHARED_DATA', os.path.join(os.path.dirname(_REPO), 'shared', 'data')),
                    'aitex_strips', 'fabric02')   # ../shared/data next to the repository, or $FCDD_SHARED_DATA


def _predictor(run):
  from fcdd_jax.serving import predictor as predict  # pylint: disable=g-import-not-at-top
  with open(os.path.join(run, 'config.json')) as f:
    patch = json.load(f)['data'].get('patch_size', 0)
  return predict.Predictor(run, batch_size=16, mode='full' if patch else 'crop'), bool(patch)


def test_files(root):
  """(paths, labels, masks at native resolution) of an MVTec-layout folder."""
  from fcdd_jax.data import image_io  # pylint: disable=g-import-not-at-top
  paths, labels, masks = [], [], []
  for kind in image_io.subdirs(os.path.join(root, 'test')):
    for p in image_io.list_images(os.path.join(root, 'test', kind)):
      paths.append(p)
      labels.append(int(kind != 'good'))
      stem = os.path.splitext(os.path.basename(p))[0]
      mp = os.path.join(root, 'ground_truth', kind, f'{stem}_mask.png')
      h, w = image_io.original_sizes([p])[0]
      masks.append(image_io.read_mask(mp) if kind != 'good' else np.zeros((h, w), np.uint8))
  return paths, np.asarray(labels), masks


def halves(images, labels, width):
  """Indices and images of a size-matched image-level test: every nominal image wider than `width` cut into
  `width`-wide pieces (the AITEX defect strips are 2048-wide halves, the nominal ones 4096 wide: a detector
  can tell them apart by size alone, a resized one by its aspect ratio)."""
  out_i, out_im = [], []
  for i, (im, lab) in enumerate(zip(images, labels)):
    if lab == 0 and im.shape[1] > width:
      for x0 in range(0, im.shape[1] - width + 1, width):
        out_i.append(i)
        out_im.append(im[:, x0:x0 + width])
    else:
      out_i.append(i)
      out_im.append(im)
  return np.asarray(out_i), out_im


def heatmaps(run, images):
  """(scores, heatmaps at each image's own size) of the run's predictor on uint8 images."""
  from fcdd_jax.evaluation import metrics as evaluation  # pylint: disable=g-import-not-at-top
  pred, patch = _predictor(run)
  scores, heats = [], []
  for img in images:
    s, (h,) = pred.predict([img])
    scores.append(float(s[0]))
    heats.append(h if patch else evaluation.resize_nearest(h, img.shape[:2]))
  return np.asarray(scores), heats, patch


def metrics(runs):
  from fcdd_jax.data import image_io  # pylint: disable=g-import-not-at-top
  from fcdd_jax.evaluation import metrics as evaluation  # pylint: disable=g-import-not-at-top
  for run in runs:
    with open(os.path.join(run, 'config.json')) as f:
      root = json.load(f)['data']['root']
    with open(os.path.join(run, 'results.json')) as f:
      res = json.load(f)
    paths, labels, masks = test_files(root)
    images = [image_io.load_image(p) for p in paths]
    scores, heats, patch = heatmaps(run, images)
    width = min(im.shape[1] for im in images)
    idx, pieces = halves(images, labels, width)
    piece_scores, _, _ = heatmaps(run, pieces)
    out = dict(run=run, mode='patch' if patch else 'resize', image_auc=float(evaluation.roc_auc(labels, scores)),
               image_auc_size_matched=float(evaluation.roc_auc(labels[idx], piece_scores)),
               size_matched_counts=[int((labels[idx] == 0).sum()), int((labels[idx] == 1).sum())],
               pixel_auc=float(evaluation.pixel_auc(masks, heats)), aupro=float(evaluation.aupro(masks, heats)),
               results_json=dict(image_auc=res['image_auc'], pixel_auc=res['pixel_auc'], aupro=res.get('aupro')),
               steps=res['steps'], train_seconds=res['train_seconds'], eval_seconds=res['eval_seconds'],
               peak_rss_gib=round(res['peak_rss_bytes'] / 2**30, 2))
    print(json.dumps(out), flush=True)


def figure(resize_run, patch_run, out, n_defect=3):
  """Test strips at native size (true aspect ratio): image, heatmap of the resized run (224² heatmap resized
  to the strip), heatmap of the patch run (native), ground truth; each heatmap normalised per image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from fcdd_jax.evaluation import figures  # pylint: disable=g-import-not-at-top
  from fcdd_jax.evaluation import native_figures  # pylint: disable=g-import-not-at-top
  from fcdd_jax.data import image_io  # pylint: disable=g-import-not-at-top
  paths, labels, masks = test_files(DATA)
  # defects of different codes, largest masks first within each code, plus one nominal 4096 strip
  picks, seen = [], set()
  for i in sorted(np.flatnonzero(labels == 1), key=lambda i: -int(masks[i].sum())):
    code = os.path.basename(os.path.dirname(paths[i]))
    if code not in seen and len(picks) < n_defect:
      picks.append(int(i))
      seen.add(code)
  picks.append(int(np.flatnonzero(labels == 0)[0]))
  sel = [paths[i] for i in picks]
  imgs = [image_io.load_image(p) for p in sel]
  _, h_resize, _ = heatmaps(resize_run, imgs)
  _, h_patch, _ = heatmaps(patch_run, imgs)
  blocks = []
  for k, i in enumerate(picks):
    img = native_figures.rgb(image_io.load_image(paths[i]))
    rows = [img, figures.overlay(img, figures.local_norm(h_resize[k], 0.97)),
            figures.overlay(img, figures.local_norm(h_patch[k], 0.97)),
            np.repeat((masks[i] > 0).astype(np.uint8)[..., None] * 255, 3, -1)]
    w = max(r.shape[1] for r in rows)
    sep = np.full((4, w, 3), 255, np.uint8)
    parts = []
    for r in rows:
      parts += [np.pad(r, ((0, 0), (0, w - r.shape[1]), (0, 0))), sep]
    blocks.append(np.concatenate(parts, 0))
  w = max(b.shape[1] for b in blocks)
  fig = np.concatenate([np.pad(b, ((0, 12), (0, w - b.shape[1]), (0, 0))) for b in blocks], 0)
  f = -(-fig.shape[1] // 2048)
  Image.fromarray(fig[::f, ::f]).quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)   # ~1 MB
  print(json.dumps(dict(figure=out, files=[os.path.relpath(p, DATA) for p in sel], shape=list(fig[::f, ::f].shape))))


def big_image(out, side=8192):
  """A side x side gray image tiled from the fabric's training strips (4096x256 each)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from fcdd_jax.data import image_io  # pylint: disable=g-import-not-at-top
  strips = [image_io.load_image(p)[..., 0] for p in image_io.list_images(os.path.join(DATA, 'train', 'good'))]
  rows = []
  k = 0
  while sum(r.shape[0] for r in rows) < side:
    row = np.concatenate([strips[(k + i) % len(strips)] for i in range(-(-side // strips[0].shape[1]))], 1)
    rows.append(row[:, :side])
    k += 1
  Image.fromarray(np.concatenate(rows, 0)[:side]).save(out)
  print(json.dumps(dict(image=out, size=[side, side])))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest='cmd', required=True)
  m = sub.add_parser('metrics')
  m.add_argument('runs', nargs='+')
  f = sub.add_parser('figure')
  f.add_argument('--resize', required=True)
  f.add_argument('--patch', required=True)
  f.add_argument('--out', required=True)
  b = sub.add_parser('big_image')
  b.add_argument('--out', required=True)
  a = p.parse_args(argv)
  if a.cmd == 'metrics':
    metrics(a.runs)
  elif a.cmd == 'figure':
    figure(a.resize, a.patch, a.out)
  else:
    big_image(a.out)
  return 0


if __name__ == '__main__':
  sys.exit(main())

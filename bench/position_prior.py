"""What a heatmap that never looks at the image scores: the position-only baselines of a masked test set.

  python -m bench.position_prior [--root DIR ...]   # default: the masked panel sets (bench/fidelity.py PANEL)

Pixel AUC and AUPRO are rank measures over all test pixels, so a fixed map that is hot where defects usually
are scores well on a set whose defects sit in one place (the MVTec 3D-AD tire: the tyre is always centred).
Two image-independent maps, scored exactly as the runs are (masks at their own resolution, every test image,
`fcdd_jax.evaluation.metrics`):
* `centre`: the same centred radial map for every image (any monotone profile gives the same AUCs);
* `mask_prior`: for each test image the mean of the *other* test images' masks (leave-one-out), the best a
  detector that only knows where defects tend to be could do.
A detector's pixel AUC / AUPRO on such a set means something only where it beats these (bench/README.md,
"Panel"). And for the border measure (`evaluation.metrics.border_share` of nominal test heatmaps), what a map
that is only the image's darkness gives (`darkness_border`: the gray image blurred with σ = 8 px, inverted, at
the net's 224² test geometry): where the nominal images are dark at their border (solar cells' cut corners),
a detector of dark blobs concentrates there without any padding artefact. Prints one JSON line per set;
`baselines(root)` is what `bench.fidelity --panel` puts in its table.
"""
import argparse
import glob
import json
import os

import numpy as np
from PIL import Image

from fcdd_jax.evaluation import metrics


def test_masks(root):
  """[N, H, W] bool masks of every test image of an MVTec-layout folder (zeros for test/good); None: no masks."""
  out, shape = [], None
  if not os.path.isdir(os.path.join(root, 'test')):
    return None
  for d in sorted(os.listdir(os.path.join(root, 'test'))):
    for f in sorted(glob.glob(os.path.join(root, 'test', d, '*'))):
      name = os.path.splitext(os.path.basename(f))[0]
      path = os.path.join(root, 'ground_truth', d, name + '_mask.png')
      if d == 'good' or not os.path.exists(path):
        out.append(None)
        continue
      m = np.asarray(Image.open(path).convert('L')) > 127
      shape = m.shape
      out.append(m)
  if shape is None:
    return None
  return np.stack([np.zeros(shape, bool) if m is None else m for m in out])


def darkness_border(root, size=224, raw=248):
  """{'ratio', 'ratio32'}: border_share (16, 32 px) of the darkness maps of `root`'s nominal test images at
  the custom runner's test geometry (masked sets: resized to size²; others: raw² and the centre crop)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  masked = os.path.isdir(os.path.join(root, 'ground_truth'))
  maps = []
  for f in sorted(glob.glob(os.path.join(root, 'test', 'good', '*'))):
    img = Image.open(f).convert('L')
    if masked:
      g = np.asarray(img.resize((size, size), Image.NEAREST), np.float64)
    else:
      o = (raw - size) // 2
      g = np.asarray(img.resize((raw, raw), Image.BILINEAR), np.float64)[o:o + size, o:o + size]
    maps.append(-ndimage.gaussian_filter(g, 8))
  if not maps:
    return None
  (s16, a16), (s32, a32) = (metrics.border_share(maps, band=b) for b in (16, 32))
  return {'ratio': round(s16 / a16, 3), 'ratio32': round(s32 / a32, 3), 'n_nominal': len(maps)}


def baselines(root):
  """{'centre': {'pixel_auc', 'aupro'}, 'mask_prior': {...}, 'darkness_border': {...}} of `root`'s test set
  (the first two only where it has masks)."""
  out = {'darkness_border': darkness_border(root)}
  masks = test_masks(root)
  if masks is None or not masks.any():
    return out
  n, h, w = masks.shape
  yy, xx = np.mgrid[0:h, 0:w]
  centre = -(((yy + 0.5) / h - 0.5) ** 2 + ((xx + 0.5) / w - 0.5) ** 2)
  total = masks.sum(0, dtype=np.float64)
  prior = [(total - m) / (n - 1) for m in masks]   # leave-one-out: the image's own mask is not in its map
  anomalous = masks.reshape(n, -1).any(1)
  for key, maps in (('centre', [centre] * n), ('mask_prior', prior)):
    out[key] = {'pixel_auc': round(float(metrics.pixel_auc(masks, np.stack(maps).astype(np.float32))), 4),
                'aupro': round(float(metrics.aupro(list(masks.astype(np.uint8)), maps)), 4),
                'n_images': int(n), 'n_anomalous': int(anomalous.sum())}
  return out


def cached(root, cache_dir):
  """baselines(root), kept in cache_dir/position_prior-v2-<folder>.json (the data do not change)."""
  path = os.path.join(cache_dir, f'position_prior-v2-{os.path.basename(os.path.normpath(root))}.json')
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  res = baselines(root)
  os.makedirs(cache_dir, exist_ok=True)
  with open(path, 'w') as f:
    json.dump(res, f)
  return res


def main(argv=None):
  from bench import fidelity  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--root', action='append', default=[], help='MVTec-layout folder(s); default: the panel sets')
  a = p.parse_args(argv)
  roots = a.root or list(fidelity.PANEL.values())
  for root in roots:
    print(json.dumps({'impl': 'position_prior', 'root': root, **baselines(root)}), flush=True)


if __name__ == '__main__':
  main()

"""Custom folders at native resolution for patch training (`data.name=custom`, `data.patch_size=P > 0`,
issue 27): the MVTec layout (train/good, test/<defect>, optional ground_truth/<defect>/<stem>_mask.png) read
without any resize, or resized by the fixed factor `data.scale` (bilinear with antialiasing; masks keep
their file's resolution, the pixel AUC is computed there).

Training and test images are lists of uint8 [h_i, w_i, 3] arrays of their own sizes. Training samples are
random P x P crops (`data/patches.py`); evaluation runs the net over each whole test image
(`evaluation/native_eval.py`). Normalisation: per-channel mean and std over every pixel of the (scaled) nominal
training images. preproc aug1: horizontal flip, the reference's ColorJitter(0.01 x 4) and +0.001·N(0,1)
noise on each crop; none: no augmentation. With ground_truth/ the GT-map loss is used (spec §3.2, with the
anomaly generator's maps of each crop), as `data/custom.py` does with maps.
"""
import os

import numpy as np

from fcdd_jax.utils import progress
from fcdd_jax.data import checks
from fcdd_jax.data import custom
from fcdd_jax.data import image_io
from fcdd_jax.data import oe
from fcdd_jax.data import patches
from fcdd_jax.data import source
from fcdd_jax.data import transforms
from fcdd_jax.utils.errors import ConfigError


def scaled(img, scale):
  """uint8 image resized by `scale` (1: unchanged), bilinear with antialiasing, at least 1 pixel per side."""
  if scale == 1:
    return img
  h, w = img.shape[:2]
  return transforms.resize_u8(img, (max(1, round(h * scale)), max(1, round(w * scale))))


def read_native(paths, scale, on_bad, what):
  """RGB uint8 images at native resolution (times `scale`): (list of arrays, kept paths)."""
  out, kept = [], []
  for p in progress.track(paths, f'decoding {what} at native resolution', len(paths), 'images'):
    try:
      img = image_io.load_image(p)
    except ValueError as e:
      if on_bad == 'skip':
        print(f'warning: {e} (skipped: data.on_bad_image=skip)', flush=True)
        continue
      raise ValueError(f'{e}; fix or remove it, or set --config.data.on_bad_image=skip') from None
    out.append(scaled(transforms.to_rgb_or_gray(img, 3), scale))
    kept.append(p)
  if not out:
    raise ValueError(f'none of the {len(paths)} {what} can be read')
  return out, kept


def test_masks(root, paths, labels, kinds, images):
  """Masks at each test file's own resolution (zeros for nominal images), or None without ground_truth/."""
  gt_dir = os.path.join(root, 'ground_truth')
  if not os.path.isdir(gt_dir):
    print(f'warning: no ground_truth/ folder in {root}: training and image AUC work; pixel_auc is null', flush=True)
    return None
  masks = []
  for p, lab, kind, img in zip(paths, labels, kinds, images):
    size = image_io.original_sizes([p])[0]
    if lab == 0:
      masks.append(np.zeros(tuple(size), np.uint8))
      continue
    mp = os.path.join(gt_dir, kind, f'{os.path.splitext(os.path.basename(p))[0]}_mask.png')
    if not os.path.exists(mp):
      raise ValueError(f'missing mask {mp} for test image {p}')
    m = image_io.read_mask(mp)
    if m.shape != tuple(size):
      raise ValueError(f'mask {mp} is {m.shape[1]}x{m.shape[0]} but its image {p} is {size[1]}x{size[0]}')
    masks.append(m)
  return masks


def load(config):
  """The Source of a custom MVTec-layout folder at native resolution (see the module doc)."""
  d = config.data
  root, p, scale = d.root, int(d.patch_size), float(d.scale)
  pre = 'none' if d.preproc in ('', 'default') else d.preproc   # checks.PREPROCS['custom']: aug1, none
  if custom.detect_layout(root) != 'mvtec':
    raise ConfigError(f'config.data.patch_size={p} needs the MVTec layout in config.data.root={root!r} '
                      '(train/good, test/<defect>, optional ground_truth/<defect>/<name>_mask.png)')
  names = (os.path.basename(os.path.normpath(root)),)
  c = checks.check_class(config, 1, names)
  good = os.path.join(root, 'train', 'good')
  train, train_paths = read_native(image_io.require_images(image_io.list_images(good), good), scale,
                                   d.on_bad_image, f'training images in {good}')
  patches.check_sizes([im.shape[:2] for im in train], train_paths, p)
  test_dir = os.path.join(root, 'test')
  paths, labels, kinds = [], [], []
  for kind in image_io.subdirs(test_dir):
    ps = image_io.list_images(os.path.join(test_dir, kind))
    paths += ps
    labels += [0 if kind == 'good' else 1] * len(ps)
    kinds += [kind] * len(ps)
  test, kept = read_native(image_io.require_images(paths, test_dir), scale, d.on_bad_image,
                           f'test images in {test_dir}')
  rows = [paths.index(k) for k in kept]
  labels, kinds = np.asarray(labels, np.int32)[rows], [kinds[i] for i in rows]
  masks = test_masks(root, kept, labels, kinds, test)
  mean, std = transforms.channel_stats(train)
  aug = pre == 'aug1'
  t = transforms.Transform(mean=mean, std=std, input_size=(p, p), raw_size=(p, p), channels=3, train_geom='none',
                           hflip=aug, orientation=d.get('orientation', ''), noise_std=0.001 if aug else 0.0, jitter=(0.01,) * 4 if aug else (),
                           resize='native')
  return source.Source(
      name='custom', class_names=names, normal_class=c, transform=t, train_images=train, test_images=test,
      test_labels=labels, test_masks=masks, test_masks_original=masks, train_gtmaps=masks is not None,
      train_original_sizes=None, size_scale=1.0, oe_images=oe.load(config, 3, (p, p)))

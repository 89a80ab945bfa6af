"""Patch training at native resolution (`data.patch_size=P`, issue 27): which image each training sample is
cut from, and the random P x P crop.

An epoch covers each training image's area once: image i of h_i x w_i pixels (after `data.scale`) yields
ceil(h_i * w_i / P²) crops per pass (times `data.enlarge`), each at an independent uniformly random position
(a 4096x256 strip and P = 224: 21 crops). The training set of an epoch is that list of image indices,
permuted per epoch like any training set, so `steps_per_epoch = ceil(sum of crops / batch)`. Images smaller
than P on either side are refused (one line naming the file and its size): padding would teach the net a
border that never occurs at test time.

The crop is cut first; the online anomaly (confetti, CutPaste, OE, ...) and its ground-truth map are made on
the crop, then the dataset's augmentation (flip, jitter, noise) and normalisation run on it, so every map is
the crop's own.
"""
import numpy as np

from fcdd_jax.utils.errors import ConfigError


def crops_per_image(h, w, p):
  """Crops of image (h, w) per pass: enough P x P crops to cover its area once."""
  return -(-(int(h) * int(w)) // (int(p) * int(p)))


def check_sizes(sizes, paths, p):
  """ConfigError naming the first image smaller than P x P (sizes: (h, w) per image)."""
  for (h, w), path in zip(sizes, paths):
    if h < p or w < p:
      raise ConfigError(f'{path}: {w}x{h} pixels (after data.scale) is smaller than config.data.patch_size={p}; '
                        'lower data.patch_size or leave the image out')


def pass_indices(sizes, p, enlarge=1):
  """Image index of every training sample of one epoch (unshuffled): image i repeated crops_per_image times
  (times enlarge)."""
  counts = [crops_per_image(h, w, p) * max(1, int(enlarge)) for h, w in sizes]
  return np.repeat(np.arange(len(counts)), counts)


def random_crop(img, gt, p, rng):
  """A uniformly random P x P crop of uint8 img [H,W,C] and its map gt [H,W] (or None): (img, gt, (y0, x0))."""
  h, w = img.shape[:2]
  y0 = int(rng.integers(0, h - p + 1))
  x0 = int(rng.integers(0, w - p + 1))
  crop = np.ascontiguousarray(img[y0:y0 + p, x0:x0 + p])
  return crop, (None if gt is None else np.ascontiguousarray(gt[y0:y0 + p, x0:x0 + p])), (y0, x0)

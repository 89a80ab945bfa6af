"""Blob self-paste anomalies (noise mode `blobpaste`): the image's own content, moved, inside a smooth
irregular blob with a soft edge.

Why (issue 24): every synthetic anomaly tried on the panel taught the net a shortcut once it learnt at all —
dark-only confetti "dark = anomalous", confetti_pm "intensity blob", CutPaste "straight seam". A blob of the
image's own content shifted elsewhere (in the spirit of DRAEM's Perlin-noise masks, Zavrtanik et al. ICCV 2021,
and NSA's self-pasting, Schlüter et al. ECCV 2022, without their external textures or Poisson blending) has
no intensity of its own (the pasted pixels are the image's, with a symmetric ±10 % colour jitter) and no
straight edge (the mask is a thresholded smooth random field, optionally elongated along an image axis).

Pure NumPy/SciPy on one uint8 image with an explicit np.random.Generator (stateless per example, like the
other synthetic anomalies); `anomalies.make_anomaly` dispatches to it.
"""
import numpy as np
from scipy import ndimage

from fcdd_jax.data import cutpaste

SELFPASTE_MODES = ('blobpaste',)

BLOB_AREA = (0.003, 0.04)    # the blob's share of the image area (before keeping one component), uniform
BLOB_SIGMA = (3.0, 12.0)     # smoothing of the random field in pixels at 256x256 (larger: rounder, larger lobes)
BLOB_ELONGATION = 4.0        # sigma_y / sigma_x log-uniform in [1/4, 4]: blobs up to ~4x longer than wide
BLOB_EDGE = 0.15             # soft edge: alpha ramps over this many field stds around the threshold
REFERENCE_SIDE = 256


def blob_alpha(rng, hw):
  """float32 [H,W] in [0, 1]: one smooth irregular blob (the connected region of a thresholded, Gaussian-
  smoothed white-noise field that holds the field's maximum), with a soft edge. Draw order: sigma,
  elongation, field, area share."""
  h, w = (int(v) for v in hw)
  scale = np.sqrt(h * w) / REFERENCE_SIDE
  sigma = rng.uniform(*BLOB_SIGMA) * scale
  a = float(np.exp(rng.uniform(-np.log(BLOB_ELONGATION), np.log(BLOB_ELONGATION))))
  field = ndimage.gaussian_filter(rng.standard_normal((h, w)), (sigma * np.sqrt(a), sigma / np.sqrt(a)),
                                  mode='wrap')
  field = (field - field.mean()) / (field.std() + 1e-12)
  thr = np.quantile(field, 1.0 - rng.uniform(*BLOB_AREA))
  comps, _ = ndimage.label(field > thr)
  keep = comps == comps.flat[int(np.argmax(field))]
  keep = ndimage.binary_dilation(keep, iterations=2)   # room for the soft edge around the kept component
  alpha = np.clip((field - thr) / BLOB_EDGE + 0.5, 0.0, 1.0)
  return np.where(keep, alpha, 0.0).astype(np.float32)


def blobpaste(rng, image, *, jitter=cutpaste.CUTPASTE_JITTER, min_change=0):
  """One uint8 image [H,W,C] -> (anomaly uint8 [H,W,C], mask bool [H,W]). The source is the whole image
  rolled (wrapping) by an offset of 1/8..7/8 of each side, colour-jittered (`cutpaste.jitter_factors`);
  inside `blob_alpha` it replaces the image (alpha-blended at the edge). The mask marks alpha >= 0.5 where
  some channel changed by more than `min_change` uint8 levels (a blob of background pasted on background is
  no anomaly to detect). Draw order: blob, offset, jitter."""
  x = np.asarray(image)
  if x.dtype != np.uint8 or x.ndim != 3 or x.shape[-1] not in (1, 3):
    raise ValueError(f'blobpaste needs a uint8 [H,W,1] or [H,W,3] image, got {x.dtype} {x.shape}')
  h, w, _ = x.shape
  alpha = blob_alpha(rng, (h, w))
  dy = int(rng.integers(max(1, h // 8), max(2, h - h // 8)))
  dx = int(rng.integers(max(1, w // 8), max(2, w - w // 8)))
  src = cutpaste.jitter_patch(np.ascontiguousarray(np.roll(x, (dy, dx), axis=(0, 1))),
                              cutpaste.jitter_factors(rng, jitter))
  out = np.rint(alpha[..., None] * src.astype(np.float32)
                + (1.0 - alpha[..., None]) * x.astype(np.float32)).clip(0, 255).astype(np.uint8)
  change = np.abs(out.astype(np.int16) - x.astype(np.int16)).max(axis=-1)
  return out, (alpha >= 0.5) & (change > min_change)

"""Synthetic anomalies (spec §6): confetti and the other noise modes, malformed_normal(_gt).

Pure NumPy on ONE uint8 [H,W,C] image at raw resolution with an explicit np.random.Generator, so the
input pipeline can seed every example statelessly. Sizes are in pixels at the raw resolution (spec);
`size_scale` shrinks them for small images (e.g. the 32x32 demo: 32/240).
"""
import numpy as np
from scipy import ndimage

NOISE_MODES = ('confetti', 'gaussian', 'uniform', 'solid', 'blob', 'mixed_blob')


def _centres(rng, h, w, p, at_least_one=True):
  n = rng.binomial(h * w, p)
  if n == 0 and at_least_one:
    n = 1
  return rng.integers(0, h, n), rng.integers(0, w, n)


def _stamp(h, w, cy, cx, side, angle_deg):
  """Boolean mask of a square of `side` centred at (cy, cx) (spec offsets), rotated by angle (nearest)."""
  lo = -(side // 2) if side % 2 else -side // 2 + 1
  hi = side // 2
  ext = int(np.ceil(0.75 * side)) + 1
  y0, y1 = max(0, cy - ext), min(h, cy + ext + 1)
  x0, x1 = max(0, cx - ext), min(w, cx + ext + 1)
  yy, xx = np.mgrid[y0:y1, x0:x1]
  t = np.deg2rad(angle_deg)
  # inverse-rotate the window coordinates about the centre (nearest neighbour), test membership
  dy, dx = yy - cy, xx - cx
  ry = np.rint(np.cos(t) * dy - np.sin(t) * dx)
  rx = np.rint(np.sin(t) * dy + np.cos(t) * dx)
  inside = (ry >= lo) & (ry <= hi) & (rx >= lo) & (rx <= hi)
  return (y0, y1, x0, x1), inside


def _blob_map(rng, shape_hwc, p, sides, value_fn, rotate=True):
  h, w, c = shape_hwc
  out = np.zeros((h, w, c), np.int32)
  cys, cxs = _centres(rng, h, w, p)
  side_of = rng.choice(sides, size=len(cys))
  colours = {}
  for cy, cx, side in zip(cys, cxs, side_of):
    if side not in colours:          # one colour per blob-size group (spec §6.2 quirk)
      colours[side] = value_fn(c)
    angle = rng.uniform(-45.0, 45.0) if rotate else 0.0
    (y0, y1, x0, x1), inside = _stamp(h, w, int(cy), int(cx), int(side), angle)
    region = out[y0:y1, x0:x1]
    region[inside] = colours[side]
  return out


def _scaled_sides(lo, hi, size_scale):
  lo2 = max(2, int(round(lo * size_scale)))
  hi2 = max(lo2, int(round(hi * size_scale)))
  return np.arange(lo2, hi2 + 1)


def _blur(x, size_scale):
  sigma = 5.0 * size_scale
  radius = max(1, int(round(12 * size_scale)))
  out = np.empty(x.shape, np.float64)
  for ch in range(x.shape[-1]):
    out[..., ch] = ndimage.gaussian_filter(x[..., ch].astype(np.float64), sigma, mode='mirror',
                                           truncate=radius / max(sigma, 1e-6))
  return out


def confetti(rng, shape_hwc, *, size_scale=1.0):
  """Confetti noise (spec §6.2; MVTec default): coloured + gray rotated squares, blurred; values <= 0."""
  h, w, c = shape_hwc
  sides = _scaled_sides(8, 54, size_scale)
  coloured = _blob_map(rng, (h, w, c), 0.000018, sides, lambda ch: rng.integers(-256, 0, ch))
  gray = _blob_map(rng, (h, w, c), 0.000012, sides, lambda ch: np.full(ch, -255))
  return _blur(coloured + gray, size_scale).astype(np.int32)


def noise(mode, rng, shape_hwc, *, size_scale=1.0):
  h, w, c = shape_hwc
  if mode == 'confetti':
    return confetti(rng, shape_hwc, size_scale=size_scale)
  if mode == 'gaussian':
    return (rng.standard_normal((h, w, c)) * 64).astype(np.float32)
  if mode == 'uniform':
    return (rng.random((h, w, c)) * 255).astype(np.float32)
  if mode == 'solid':
    return np.broadcast_to(rng.integers(0, 256, c), (h, w, c)).astype(np.int32)
  if mode == 'blob':
    side = max(2, int(round(6 * size_scale)))
    return _blob_map(rng, shape_hwc, 0.002, np.array([side]), lambda ch: np.full(ch, 255), rotate=False)
  if mode == 'mixed_blob':
    side = max(2, int(round(34 * size_scale)))
    a = _blob_map(rng, shape_hwc, 1e-5, np.array([side]), lambda ch: np.full(ch, 255), rotate=False)
    a = np.where(a > 0, rng.integers(0, 256, a.shape), 0)
    b = _blob_map(rng, shape_hwc, 1e-5, np.array([side]), lambda ch: np.full(ch, 255), rotate=False)
    return (a + b).astype(np.int32)
  raise ValueError(f'noise_mode={mode!r} is unknown; synthetic modes: {", ".join(NOISE_MODES)}')


def _to_u8(x):
  x = np.asarray(x)
  if x.dtype.kind == 'f':  # float noise: min-max rescaled per image to 0..255 (spec §6.4)
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(x)
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def make_anomaly(supervise_mode, noise_mode, rng, nominal, *, oe_image=None, oe_mask=None, offline=False,
                 size_scale=1.0):
  """Returns (anomaly uint8 [H,W,C], gtmap float32 [H,W]) for one nominal uint8 image (spec §6)."""
  x = np.asarray(nominal)
  h, w, c = x.shape
  if supervise_mode == 'noise':
    if oe_image is not None:
      img = np.asarray(oe_image, np.uint8)
      gt = np.ones((h, w), np.float32) if oe_mask is None else (np.asarray(oe_mask) > 0).astype(np.float32)
      return img, gt
    return _to_u8(noise(noise_mode, rng, x.shape, size_scale=size_scale)), np.ones((h, w), np.float32)
  if supervise_mode not in ('malformed_normal', 'malformed_normal_gt'):
    raise ValueError(f'supervise_mode={supervise_mode!r} cannot generate anomalies; use noise, '
                     'malformed_normal or malformed_normal_gt')
  if oe_image is not None:   # an Outlier-Exposure image used as the noise added to the nominal image
    n = np.asarray(oe_image, np.int32)
  else:
    n = np.rint(noise(noise_mode, rng, x.shape, size_scale=size_scale)).astype(np.int32)
  xi = x.astype(np.int32)
  if offline:  # spec §6.3: flip the noise sign on bright pixels
    bright = xi.sum(-1, keepdims=True) > 0.11 * 255 * c
    n = np.where(bright, -n, n)
  else:        # spec §6.4: brighten instead of darken when darkening does (almost) nothing
    d = abs(float(np.mean(np.clip(xi + n, 0, 255) - xi)))
    d_inv = abs(float(np.mean(np.clip(xi - n, 0, 255) - xi)))
    if d < 0.025 and d_inv > d:
      n = -n
  out = np.clip(xi + n, 0, 255).astype(np.uint8)
  if supervise_mode == 'malformed_normal_gt':
    gt = np.any(out != x, axis=-1).astype(np.float32)
  else:
    gt = np.ones((h, w), np.float32)
  return out, gt

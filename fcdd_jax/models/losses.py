"""FCDD, HSC and AE objectives, anomaly scores and HSC gradient heatmaps (spec §3, §8.3).

Labels: 0 = nominal ("concentrate"), 1 = anomalous ("push away"). Every loss takes an optional `valid [N]`
(1 = real example, 0 = padding) that removes padding rows from all means, and returns a dict with
`loss`, `loss_nominal`, `loss_anomalous` (means over the nominal / anomalous examples, 0 when absent) and
`per_example`.
"""
import re

import jax
import jax.numpy as jnp

from fcdd_jax.models import receptive

REFERENCE_EPS = 1e-31      # the reference's -log(1 - exp(-a) + 1e-31)
STABLE_FLOOR = 1e-6        # below it the stable term continues linearly (finite value and gradient)


def pseudo_huber(x):
  """h(x) = sqrt(x^2 + 1) - 1 (spec §3.1), computed as x^2 / (sqrt(x^2 + 1) + 1) (no cancellation)."""
  x2 = jnp.square(x)
  return x2 / (jnp.sqrt(x2 + 1.0) + 1.0)


def anomalous_term(a, stable=True):
  """-log(1 - exp(-a)): the push-away term for anomalies (spec §3.1, §11.2).

  stable=False is the reference's float32 form -log(1 - exp(-a) + 1e-31), whose gradient is ~-1e31 for
  a < ~6e-8. stable=True computes -log(-expm1(-a)) (equal elsewhere within float32 rounding) and below
  STABLE_FLOOR continues with the tangent at the floor, so value and gradient stay finite for a >= 0.
  """
  a = jnp.asarray(a, jnp.float32)
  if not stable:
    return -jnp.log(1.0 - jnp.exp(-a) + REFERENCE_EPS)
  f = STABLE_FLOOR
  safe = jnp.maximum(a, f)
  value = -jnp.log(-jnp.expm1(-safe))
  f_floor = -jnp.log(-jnp.expm1(-jnp.float32(f)))
  slope = -1.0 / jnp.expm1(jnp.float32(f))      # d/da -log(1-exp(-a)) at a = f
  return jnp.where(a >= f, value, f_floor + slope * (a - f))


def _valid(valid, n):
  return jnp.ones((n,), jnp.float32) if valid is None else jnp.asarray(valid, jnp.float32)


def _mean(x, w):
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def _pack(per_example, labels, valid, nominal_values=None):
  lab = jnp.asarray(labels).astype(jnp.float32)
  nom_w, ano_w = valid * (1.0 - lab), valid * lab
  nominal_values = per_example if nominal_values is None else nominal_values
  return {
      'loss': _mean(per_example, valid),
      'loss_nominal': _mean(nominal_values, nom_w),
      'loss_anomalous': _mean(per_example, ano_w),
      'per_example': per_example,
  }


def fcdd_heatmaps(phi):
  """Low-resolution anomaly heatmaps A = h(phi): [N,h,w,1] -> [N,h,w]."""
  return pseudo_huber(jnp.asarray(phi, jnp.float32))[..., 0]


def fcdd_scores(phi):
  """Image score = mean of the low-resolution pseudo-Huber map (spec §3.5, §11.7)."""
  return jnp.mean(fcdd_heatmaps(phi), axis=(1, 2))


def parse_image_score(spec):
  """`config.eval.image_score` -> the share of the upsampled heatmap's pixels it averages, or None.

  'mean' (spec §3.5, the default): None, the mean of the low-resolution map. 'max': 0.0, the largest pixel of
  the receptive-field-upsampled map. 'top<p>%' (e.g. 'top1%'): p / 100, the mean of its largest p % pixels.
  The pooled scores see a defect of a few hundred pixels that the image mean dilutes (see `bench/README.md`,
  "Recipe for real defects"). Raises ValueError naming the value and what is allowed."""
  s = str(spec).strip()
  if s == 'mean':
    return None
  if s == 'max':
    return 0.0
  m = re.fullmatch(r'top([0-9]*\.?[0-9]+)%', s)
  if m and 0 < float(m.group(1)) <= 100:
    return float(m.group(1)) / 100
  raise ValueError(f'config.eval.image_score={spec!r}; allowed: mean, max or top<p>% with 0 < p <= 100 '
                   '(e.g. top1%)')


def fcdd_image_scores(low, up, top=None):
  """Image scores [N] from the low-resolution maps `low` [N,h,w] and the upsampled maps `up` [N,H,W].

  top=None: mean of `low` (spec §3.5); otherwise the mean of the largest max(1, round(top·H·W)) pixels of
  `up` (top=0: its maximum); see `parse_image_score`."""
  if top is None:
    return jnp.mean(low, axis=(1, 2))
  flat = jnp.asarray(up, jnp.float32).reshape(up.shape[0], -1)
  k = max(1, int(round(top * flat.shape[1])))
  if k == 1:
    return jnp.max(flat, axis=1)
  return jnp.mean(jnp.sort(flat, axis=1)[:, -k:], axis=1)   # sort, not lax.top_k: TF's StableHLO reads it


def fcdd_loss(phi, labels, valid=None, *, stable=True, single_label_parity=True):
  """FCDD loss without ground-truth maps (spec §3.1).

  single_label_parity (spec §11.3): when all (valid) labels of the batch are equal, every example counts as
  nominal, as in the reference (even an all-anomalous batch).
  """
  a = fcdd_scores(phi)
  n = a.shape[0]
  valid = _valid(valid, n)
  lab = jnp.asarray(labels).astype(jnp.int32)
  is_anom = lab == 1
  if single_label_parity:
    big = jnp.int32(1 << 20)
    lo = jnp.min(jnp.where(valid > 0, lab, big))
    hi = jnp.max(jnp.where(valid > 0, lab, -big))
    is_anom = is_anom & (lo != hi)
  per = jnp.where(is_anom, anomalous_term(a, stable), a)
  return _pack(per, is_anom.astype(jnp.int32), valid)


def fcdd_gt_loss(phi, gtmaps, reception, std, valid=None, *, stable=True):
  """FCDD loss with ground-truth maps (spec §3.2), on the Gaussian-upsampled heatmap."""
  gt = jnp.asarray(gtmaps, jnp.float32)
  if gt.ndim == 4:
    gt = gt[..., 0]
  a_up = receptive.upsample(fcdd_heatmaps(phi), reception, (gt.shape[1], gt.shape[2]), std)
  norm = jnp.mean(a_up * (1.0 - gt), axis=(1, 2))
  has_anom = jnp.any(gt == 1.0, axis=(1, 2))
  anom = jnp.where(has_anom, anomalous_term(jnp.mean(a_up * gt, axis=(1, 2)), stable), 0.0)
  n = norm.shape[0]
  valid = _valid(valid, n)
  per = norm + anom
  return _pack(per, has_anom.astype(jnp.int32), valid, nominal_values=per)


def hsc_scores(z):
  """HSC score s = sqrt(||z||^2 + 1) - 1 (spec §3.3)."""
  z2 = jnp.sum(jnp.square(jnp.asarray(z, jnp.float32)), axis=-1)
  return z2 / (jnp.sqrt(z2 + 1.0) + 1.0)


def hsc_loss(z, labels, valid=None, *, stable=True):
  """HSC baseline loss (spec §3.3): per-sample labels regardless of the batch composition."""
  s = hsc_scores(z)
  lab = jnp.asarray(labels).astype(jnp.int32)
  per = jnp.where(lab == 1, anomalous_term(s, stable), s)
  return _pack(per, lab, _valid(valid, s.shape[0]))


def ae_scores(recon, x):
  """AE score: mean squared error per example (spec §3.5)."""
  d = jnp.square(jnp.asarray(recon, jnp.float32) - jnp.asarray(x, jnp.float32))
  return jnp.mean(d, axis=tuple(range(1, d.ndim)))


def ae_heatmaps(recon, x):
  """AE pixel map: squared error averaged over colour channels (spec §3.5)."""
  d = jnp.square(jnp.asarray(recon, jnp.float32) - jnp.asarray(x, jnp.float32))
  return jnp.mean(d, axis=-1)


def ae_loss(recon, x, valid=None):
  """AE baseline loss (spec §3.4): mean squared error over everything (valid rows)."""
  per = ae_scores(recon, x)
  n = per.shape[0]
  return _pack(per, jnp.zeros((n,), jnp.int32), _valid(valid, n))


def _gaussian_blur(x, r, std):
  """kornia-style normalised Gaussian blur of [N,H,W] maps, kernel size r (odd), reflect border."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  k = int(r) if int(r) % 2 == 1 else int(r) - 1
  std = receptive.default_std(r) if std is None or std <= 0 else std
  g = np.exp(-0.5 * ((np.arange(k) - (k - 1) / 2) / std) ** 2)
  g = jnp.asarray(g / g.sum(), jnp.float32)
  pad = k // 2
  x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode='reflect')
  x = jax.vmap(lambda m: jax.vmap(lambda row: jnp.convolve(row, g, mode='valid'))(m))(x)
  x = jax.vmap(lambda m: jax.vmap(lambda col: jnp.convolve(col, g, mode='valid'), in_axes=1, out_axes=1)(m))(x)
  return x


def hsc_gradient_heatmaps(score_fn, x, blur=False, r=None, std=None):
  """|d score / d input| summed over channels (spec §8.3): [N,H,W,C] -> [N,H,W]; optional blur."""
  grads = jax.grad(lambda xx: jnp.sum(score_fn(xx)))(jnp.asarray(x, jnp.float32))
  maps = jnp.sum(jnp.abs(grads), axis=-1)
  if blur and r:
    maps = _gaussian_blur(maps, r, std)
  return maps

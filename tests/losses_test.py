"""Objectives against NumPy references (spec §3, §11.2, §11.3)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcdd_jax.models import losses
from fcdd_jax.models import receptive
from tests import references

A_VALUES = [0.0, 1e-9, 1e-7, 1e-3, 1.0, 30.0]


def np_ref_term(a):
  a = np.float32(a)
  return np.float32(-np.log(np.float32(1) - np.exp(-a) + np.float32(1e-31)))


def np_exact_term(a):  # float64 truth
  return -np.log(-np.expm1(-np.float64(a)))


@pytest.mark.parametrize('a', A_VALUES)
def test_stable_anomalous_term_value_and_gradient(a):
  val = float(losses.anomalous_term(jnp.float32(a), stable=True))
  grad = float(jax.grad(lambda x: losses.anomalous_term(x, stable=True))(jnp.float32(a)))
  assert np.isfinite(val) and np.isfinite(grad)
  floor = losses.STABLE_FLOOR
  if a >= floor:
    assert val == pytest.approx(np_exact_term(a), rel=1e-5)
    assert grad == pytest.approx(-1 / np.expm1(np.float64(a)), rel=1e-4)
  else:  # tangent continuation below the floor: finite, monotone, bounded gradient
    want = np_exact_term(floor) - (a - floor) / np.expm1(floor)
    assert val == pytest.approx(want, rel=1e-5)
    assert grad == pytest.approx(-1 / np.expm1(floor), rel=1e-4)
    assert abs(grad) <= 1.01 / floor


@pytest.mark.parametrize('a', A_VALUES)
def test_reference_anomalous_term_reproduces_its_float32_form(a):
  val = float(losses.anomalous_term(jnp.float32(a), stable=False))
  if a >= 1e-3:
    assert val == pytest.approx(float(np_ref_term(a)), rel=1e-5)
  else:  # 1 - exp(-a) is at or below float32 resolution: the reference's value jumps to 15.9 .. 71.4
    assert 15.0 < val <= 71.5
  grad = float(jax.grad(lambda x: losses.anomalous_term(x, stable=False))(jnp.float32(a)))
  if a <= 1e-9:  # spec §11.2: the reference's gradient explodes (~ -1e31) near 0
    assert grad < -1e20
  if a >= 1e-3:
    assert grad == pytest.approx(-1 / np.expm1(a), rel=1e-2)


def np_fcdd_loss(phi, labels, valid, parity=True):
  A = np.sqrt(phi ** 2 + 1) - 1
  a = A.reshape(len(A), -1).mean(1)
  v = valid > 0
  lab = labels.copy()
  if parity and len(set(lab[v].tolist())) == 1:
    lab = np.zeros_like(lab)
  per = np.where(lab == 1, -np.log(-np.expm1(-a)), a)
  return per[v].mean(), per


def test_fcdd_loss_against_numpy():
  rng = np.random.default_rng(0)
  phi = rng.normal(size=(6, 4, 4, 1)).astype(np.float32)
  labels = np.array([0, 1, 0, 1, 1, 0])
  valid = np.array([1, 1, 1, 1, 0, 0], np.float32)
  out = losses.fcdd_loss(phi, labels, valid)
  want, per = np_fcdd_loss(phi.astype(np.float64), labels, valid)
  assert float(out['loss']) == pytest.approx(want, rel=1e-5)
  v = valid > 0
  assert float(out['loss_nominal']) == pytest.approx(per[v & (labels == 0)].mean(), rel=1e-5)
  assert float(out['loss_anomalous']) == pytest.approx(per[v & (labels == 1)].mean(), rel=1e-5)
  # scores and heatmaps
  A = np.sqrt(phi.astype(np.float64) ** 2 + 1) - 1
  np.testing.assert_allclose(np.asarray(losses.fcdd_scores(phi)), A.mean((1, 2, 3)), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(losses.fcdd_heatmaps(phi)), A[..., 0], rtol=1e-5)


def test_single_label_batch_parity_and_variant():
  rng = np.random.default_rng(1)
  phi = rng.normal(size=(4, 3, 3, 1)).astype(np.float32)
  labels = np.ones(4, int)
  valid = np.ones(4, np.float32)
  parity = float(losses.fcdd_loss(phi, labels, valid, single_label_parity=True)['loss'])
  assert parity == pytest.approx(np_fcdd_loss(phi.astype(np.float64), labels, valid, True)[0], rel=1e-5)
  clean = float(losses.fcdd_loss(phi, labels, valid, single_label_parity=False)['loss'])
  assert clean == pytest.approx(np_fcdd_loss(phi.astype(np.float64), labels, valid, False)[0], rel=1e-5)
  assert parity != pytest.approx(clean)
  # Padding rows do not count when deciding single-label: one real anomaly + padding nominal rows.
  out = losses.fcdd_loss(phi, np.array([1, 0, 0, 0]), np.array([1, 0, 0, 0], np.float32))
  assert float(out['loss']) == pytest.approx(np_fcdd_loss(phi.astype(np.float64), np.array([0, 0, 0, 0]),
                                                          np.array([1, 0, 0, 0.]))[0], rel=1e-5)


def test_gt_map_loss_against_numpy():
  rng = np.random.default_rng(2)
  rec = receptive.Reception(16, 4, 1.5)
  phi = rng.normal(size=(3, 7, 7, 1)).astype(np.float32)
  gt = np.zeros((3, 28, 28), np.float32)
  gt[1] = 1.0
  gt[2, 5:12, 3:9] = 1.0
  out = losses.fcdd_gt_loss(phi, gt, rec, 1.2)
  A = np.sqrt(phi[..., 0].astype(np.float64) ** 2 + 1) - 1
  up = references.np_algorithm1(A, 16, 4, 1.5, 28, 1.2)
  norm = (up * (1 - gt)).mean((1, 2))
  anom = np.where(gt.reshape(3, -1).max(1) == 1, -np.log(-np.expm1(-(up * gt).mean((1, 2)))), 0)
  np.testing.assert_allclose(np.asarray(out['per_example']), norm + anom, rtol=1e-4)
  assert float(out['loss']) == pytest.approx((norm + anom).mean(), rel=1e-4)
  g = jax.grad(lambda p: losses.fcdd_gt_loss(p, gt, rec, 1.2)['loss'])(jnp.asarray(phi))
  assert np.isfinite(np.asarray(g)).all()


def test_hsc_and_ae_losses_against_numpy():
  rng = np.random.default_rng(3)
  z = rng.normal(size=(5, 8)).astype(np.float32)
  labels = np.array([0, 1, 1, 0, 1])
  s = np.sqrt((z.astype(np.float64) ** 2).sum(1) + 1) - 1
  per = np.where(labels == 1, -np.log(-np.expm1(-s)), s)
  out = losses.hsc_loss(z, labels)
  assert float(out['loss']) == pytest.approx(per.mean(), rel=1e-5)
  np.testing.assert_allclose(np.asarray(losses.hsc_scores(z)), s, rtol=1e-5)
  x = rng.normal(size=(4, 6, 6, 3)).astype(np.float32)
  r = rng.normal(size=(4, 6, 6, 3)).astype(np.float32)
  valid = np.array([1, 1, 0, 1], np.float32)
  d = (r.astype(np.float64) - x) ** 2
  out = losses.ae_loss(r, x, valid)
  assert float(out['loss']) == pytest.approx(d[valid > 0].mean(), rel=1e-5)
  np.testing.assert_allclose(np.asarray(losses.ae_heatmaps(r, x)), d.mean(-1), rtol=1e-5)


def test_hsc_gradient_heatmaps():
  rng = np.random.default_rng(4)
  w = rng.normal(size=(5 * 5 * 2, 3)).astype(np.float32)
  score = lambda x: losses.hsc_scores(x.reshape(x.shape[0], -1) @ w)
  x = rng.normal(size=(2, 5, 5, 2)).astype(np.float32)
  maps = np.asarray(jax.jit(lambda x: losses.hsc_gradient_heatmaps(score, x))(x))
  # NumPy: d s / d x = (z / (s + 1)) @ w.T with z = x w
  xf = x.reshape(2, -1).astype(np.float64)
  zz = xf @ w
  s = np.sqrt((zz ** 2).sum(1) + 1) - 1
  g = (zz / (s[:, None] + 1)) @ w.T
  np.testing.assert_allclose(maps, np.abs(g.reshape(2, 5, 5, 2)).sum(-1), rtol=1e-4, atol=1e-6)
  want = np.abs(g.reshape(2, 5, 5, 2)).sum(-1)
  for r, std in ((4, 1.0), (5, 0.7), (6, None)):   # even r: kernel r - 1; no std: σ(r) of spec §4
    blurred = np.asarray(losses.hsc_gradient_heatmaps(score, x, blur=True, r=r, std=std))
    k = r if r % 2 else r - 1
    sigma = std if std else math.log10(0.45 * r + 1) + 0.25
    np.testing.assert_allclose(blurred, _np_kornia_blur(want, k, sigma), rtol=1e-4, atol=1e-6)


def _np_kornia_blur(maps, k, sigma):
  """kornia.filters.gaussian_blur2d (spec §8.3): a normalised k x k Gaussian, reflect borders, per map."""
  g = np.exp(-0.5 * ((np.arange(k) - (k - 1) / 2) / sigma) ** 2)
  kernel = np.outer(g, g) / g.sum() ** 2
  p = k // 2
  padded = np.pad(maps, ((0, 0), (p, p), (p, p)), mode='reflect')
  out = np.zeros_like(maps)
  for y in range(maps.shape[1]):
    for x in range(maps.shape[2]):
      out[:, y, x] = (padded[:, y:y + k, x:x + k] * kernel).sum((1, 2))
  return out


def test_image_score_spec_parsing():
  assert losses.parse_image_score('mean') is None
  assert losses.parse_image_score('max') == 0.0
  assert losses.parse_image_score('top1%') == pytest.approx(0.01)
  assert losses.parse_image_score('top0.5%') == pytest.approx(0.005)
  assert losses.parse_image_score('top100%') == pytest.approx(1.0)
  for bad in ('median', 'top0%', 'top101%', 'top1', 'top%', ''):
    with pytest.raises(ValueError, match='config.eval.image_score=.*allowed: mean, max or top<p>%'):
      losses.parse_image_score(bad)


def test_pooled_image_scores_against_numpy():
  rng = np.random.default_rng(3)
  low = rng.random((3, 4, 5)).astype(np.float32)
  up = rng.random((3, 20, 24)).astype(np.float32)
  np.testing.assert_allclose(losses.fcdd_image_scores(low, up, None), low.mean(axis=(1, 2)), rtol=1e-6)
  np.testing.assert_allclose(losses.fcdd_image_scores(low, up, 0.0), up.max(axis=(1, 2)), rtol=1e-6)
  flat = -np.sort(-up.reshape(3, -1), axis=1)
  for top, k in ((0.05, 24), (0.01, 5), (1e-4, 1), (1.0, 480)):   # k = max(1, round(top * 480))
    np.testing.assert_allclose(losses.fcdd_image_scores(low, up, top), flat[:, :k].mean(1), rtol=1e-5)

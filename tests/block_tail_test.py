"""The fused blocks' BN-activation-pool tail as oneDNN-extension custom calls (fcdd_jax.models.cpu.onednn.block_tail).

Forward and backward against a float64 NumPy reference (its gradient checked with finite differences), in float32
and bfloat16 (roundings modelled), for every BN mode (batch statistics with and without a row mask, given
statistics, none), activation (relu, leaky, none) and pool (2x2, none); and whole fused blocks on oneDNN with the
native tail against the same blocks with the jnp tail (`fused_block.NATIVE_TAIL = False`).
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcdd_jax.models.cpu import fused_block
from fcdd_jax.models.cpu import onednn
from fcdd_jax.models.cpu.onednn import block_tail
from tests import onednn_conv_test

needs_onednn = pytest.mark.skipif(not onednn.load(),
                                  reason=f'oneDNN extension unavailable: {onednn.unavailable_reason()}')
SLOPE = 0.01


def _bf16(a):
  return np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


def _ident(a):
  return a


def _windows(a, k):
  n, h, w, c = a.shape
  return a.reshape(n, h // k, k, w // k, k, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, h // k, w // k, c, k * k)


def _unwindows(a, k):
  n, ho, wo, c, _ = a.shape
  return a.reshape(n, ho, wo, c, k, k).transpose(0, 1, 4, 2, 5, 3).reshape(n, ho * k, wo * k, c)


def _np_tail(z, mean, var, scale, bias, mask, bn, act, pool, eps, rnd):
  """float64 forward: (y, mean, var, intermediates). Batch statistics over the rows with mask > 0."""
  if bn == 'batch':
    real = z[mask > 0]
    mean, var = real.mean((0, 1, 2)), real.var((0, 1, 2))
  inv = 1 / np.sqrt(var + eps) if bn else None
  xhat = (z - mean) * inv if bn else None
  a = rnd(xhat * scale + bias) if bn else z
  slope_c = float(rnd(np.float64(SLOPE)))
  r = np.maximum(a, 0) if act == 'relu' else np.where(a > 0, a, rnd(a * slope_c)) if act == 'leaky' else a
  k = max(pool, 1)
  rw = _windows(r, k)
  first = np.argmax(rw, axis=-1)
  y = np.take_along_axis(rw, first[..., None], -1)[..., 0]
  return y, mean, var, (inv, xhat, first)


def _np_tail_grads(z, mean, var, scale, bias, mask, bn, act, pool, eps, gy, rnd):
  """float64 backward of `_np_tail` for the cotangent gy of y: (dz, dscale, dbias, db)."""
  y, mean, var, (inv, xhat, first) = _np_tail(z, mean, var, scale, bias, mask, bn, act, pool, eps, rnd)
  ga = gy * (y > 0) if act == 'relu' else np.where(y > 0, gy, gy * SLOPE) if act == 'leaky' else gy
  k = max(pool, 1)
  gw = np.zeros(y.shape + (k * k,))
  np.put_along_axis(gw, first[..., None], ga[..., None], -1)
  g = _unwindows(gw, k)
  if not bn:
    return g, None, None, g.sum((0, 1, 2))
  dgamma, dbeta = (g * xhat).sum((0, 1, 2)), g.sum((0, 1, 2))
  gain = scale * inv
  if bn == 'running':
    return g * gain, dgamma, dbeta, gain * dbeta
  m = mask.reshape(-1, 1, 1, 1)
  cnt = mask.sum() * z.shape[1] * z.shape[2]
  return gain * (g - m * dbeta / cnt - m * xhat * dgamma / cnt), dgamma, dbeta, np.zeros_like(dbeta)


def _case(seed, n=5, hw=(8, 6), c=16):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n,) + hw + (c,)) * 2 + 0.5
  mask = np.array([0, 1, 1, 0, 1], np.float64)
  z[mask == 0] += 9.0    # padding rows far off: counted, they would move the statistics a lot
  return (z, rng.normal(size=c) * 0.3, rng.uniform(0.5, 2, size=c), 1 + 0.3 * rng.normal(size=c),
          0.3 * rng.normal(size=c), mask, rng)


def test_reference_gradient_matches_finite_differences():
  """The float64 backward is the derivative of the float64 forward (batch statistics of the masked rows, leaky,
  2x2 pool), so the custom calls are checked against something independently right."""
  z, mean, var, scale, bias, mask, rng = _case(0)
  gy = rng.normal(size=(5, 4, 3, 16))
  dz, dgamma, dbeta, _ = _np_tail_grads(z, mean, var, scale, bias, mask, 'batch', 'leaky', 2, 1e-4, gy, _ident)
  args = [z, scale, bias]
  for i, grad in enumerate((dz, dgamma, dbeta)):
    v = rng.normal(size=args[i].shape)

    def loss(t, i=i, v=v):
      a = list(args)
      a[i] = a[i] + t * v
      return np.sum(_np_tail(a[0], mean, var, a[1], a[2], mask, 'batch', 'leaky', 2, 1e-4, _ident)[0] * gy)

    fd = (loss(1e-6) - loss(-1e-6)) / 2e-6
    np.testing.assert_allclose(np.sum(grad * v), fd, rtol=1e-6, atol=1e-8)


MODES = [(bn, act, pool, masked) for bn, act, pool, masked in
         itertools.product([None, 'batch', 'running'], [None, 'relu', 'leaky'], [0, 2], [False, True])
         if not masked or bn == 'batch']


@needs_onednn
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('bn,act,pool,masked', MODES)
def test_tail_equals_numpy_float64(bn, act, pool, masked, dtype):
  """Forward (y, statistics) and backward (dz, dscale, dbias, db) of the custom calls vs the float64 reference:
  float32 to float32 rounding; bfloat16 with its roundings modelled, up to rare rounding-boundary flips."""
  z, mean, var, scale, bias, mask, rng = _case(1)
  if not masked:
    mask = np.ones_like(mask)
  rnd = _bf16 if dtype == 'bfloat16' else _ident
  z = rnd(z)
  spec = fused_block.BlockSpec(pad=0, bn=bn, eps=1e-4, act=act, slope=SLOPE, pool=pool, dtype=dtype, conv='onednn')
  k = max(pool, 1)
  gy = rnd(rng.normal(size=(5, 8 // k, 6 // k, 16)))
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  none = jnp.zeros((0,), jnp.float32)
  aff = (f32(scale), f32(bias)) if bn else (none, none)
  stats = (f32(mean), f32(var)) if bn else (none, none)
  mk = f32(mask) if masked else none
  zc = jnp.asarray(z, dtype)
  y, bm, bv = jax.jit(lambda zc: block_tail.forward(spec, zc, *stats, *aff, mk))(zc)
  dz, dscale, dbias, db = jax.jit(lambda zc, g, m, v: block_tail.backward(spec, zc, g, m, v, *aff, mk))(
      zc, jnp.asarray(gy, dtype), bm if bn == 'batch' else stats[0], bv if bn == 'batch' else stats[1])
  assert y.dtype == dz.dtype == jnp.dtype(dtype)
  sc, bi = (scale, bias) if bn else (None, None)
  want_y, want_m, want_v, _ = _np_tail(z, mean, var, sc, bi, mask, bn, act, pool, 1e-4, rnd)
  want = _np_tail_grads(z, mean, var, sc, bi, mask, bn, act, pool, 1e-4, gy, rnd)
  got = {'y': y, 'dz': dz, 'db': db}
  ref = {'y': want_y, 'dz': want[0], 'db': want[3]}
  if bn:
    got.update(mean=bm, var=bv, dscale=dscale, dbias=dbias)
    ref.update(mean=want_m, var=want_v, dscale=want[1], dbias=want[2])
  for name, g in got.items():
    g, r = np.asarray(g, np.float64), ref[name]
    assert g.shape == r.shape, name
    scale_ = max(np.abs(r).max(), 1e-6)
    if dtype == 'float32' or name in ('mean', 'var'):
      np.testing.assert_allclose(g, r, rtol=0, atol=2e-5 * scale_, err_msg=name)
    else:  # bf16 results: a few elements may sit on the other side of a rounding boundary
      assert np.sqrt(np.mean((g - r) ** 2)) <= 1e-2 * np.sqrt(np.mean(r ** 2)) + 1e-12, name
      assert np.mean(np.abs(g - r) <= 1e-2 * scale_) > 0.99, name


@needs_onednn
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('bn,act,pool,masked', [('batch', 'leaky', 2, False), ('batch', 'relu', 2, True),
                                                ('running', 'leaky', 0, False), (None, None, 2, False)])
def test_block_with_native_tail_equals_block_with_jnp_tail(bn, act, pool, masked, dtype):
  """A whole fused block on oneDNN: outputs, statistics and all gradients with the custom-call tail equal those
  with the jnp tail (float32: to float32 rounding; bfloat16: to a bf16 rounding of a few elements)."""
  onednn_conv_test.skip_unless_onednn_has(dtype)
  rng = np.random.default_rng(4)
  spec = fused_block.BlockSpec(pad=1, bn=bn, eps=1e-4, act=act, slope=SLOPE, pool=pool, dtype=dtype, conv='onednn')
  x = jnp.asarray(rng.normal(size=(6, 8, 8, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 5, 16)) * 0.3, jnp.float32)
  b = jnp.asarray(rng.normal(size=16), jnp.float32)
  none = jnp.zeros((0,), jnp.float32)
  s, bb = (jnp.asarray(1 + 0.3 * rng.normal(size=16), jnp.float32), jnp.asarray(rng.normal(size=16), jnp.float32)) \
      if bn else (none, none)
  m, v = (jnp.asarray(rng.normal(size=16), jnp.float32), jnp.asarray(rng.uniform(0.5, 2, 16), jnp.float32)) \
      if bn else (none, none)
  mask = jnp.asarray([1, 1, 0, 1, 1, 0], jnp.float32) if masked else None
  g = jnp.asarray(rng.normal(size=(6, 8 // max(pool, 1), 8 // max(pool, 1), 16)), jnp.float32)

  def run(native):
    fused_block.NATIVE_TAIL = native
    try:
      def loss(x, w, b, s, bb):
        y, bm, bv = fused_block.conv_block(spec, x, w, b, s, bb, m, v, mask)
        return jnp.sum(y.astype(jnp.float32) * g), (y, bm, bv)
      return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(x, w, b, s, bb)
    finally:
      fused_block.NATIVE_TAIL = True

  tol = 1e-5 if dtype == 'float32' else 2e-3
  for got, want in zip(jax.tree.leaves(run(True)), jax.tree.leaves(run(False))):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if want.size:
      np.testing.assert_allclose(got, want, rtol=0, atol=tol * max(np.abs(want).max(), 1e-6))

"""Fused conv-BN-activation-pool blocks (fcdd_jax.models.cpu.fused_block) on a padded batch (issue 12: bf16 memory).

The epoch's padded last batch normalises with the real rows' statistics (`mask`). It runs inside the fused
block like every other batch: checked here against a NumPy float64 forward and backward written out by hand
(itself checked with finite differences), and on the compiled temporary memory of a small VGG feature stack,
where the padded step must not need more than the unpadded one (the unfused masked BatchNorm it replaced
doubled it).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcdd_jax.models import feature_stack
from fcdd_jax.models.cpu import fused_block
from tests import references


def _bf16(a):
  return np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


def _np_masked_forward(x, w, b, scale, bias, mask, pad, eps, pool, rnd=lambda a: a):
  """float64 conv(+b) -> BN with the statistics of the rows where mask > 0 (biased variance) -> ReLU -> pool x
  pool max pool (first maximum, row-major). `rnd` models a low-precision compute dtype (conv operands, conv
  output, BN output). Returns (y, batch mean, batch var, intermediates for the backward)."""
  x, w = rnd(x), rnd(w)
  z = rnd(references.np_conv(x, w, pad) + b)
  real = z[mask > 0]
  mean, var = real.mean((0, 1, 2)), real.var((0, 1, 2))
  inv = 1 / np.sqrt(var + eps)
  xhat = (z - mean) * inv
  a = rnd(xhat * scale + bias)
  r = np.maximum(a, 0)
  n, h, wd, c = r.shape
  if pool:
    rw = r.reshape(n, h // pool, pool, wd // pool, pool, c).transpose(0, 1, 3, 5, 2, 4).reshape(
        n, h // pool, wd // pool, c, pool * pool)
    first = np.argmax(rw, axis=-1)
    y = np.take_along_axis(rw, first[..., None], -1)[..., 0]
  else:
    rw, first, y = None, None, r
  return y, mean, var, (x, w, z, inv, xhat, a, rw, first)


def _np_masked_block(x, w, b, scale, bias, mask, pad, eps, pool, dy, rnd=lambda a: a):
  """Forward and hand-written backward of `_np_masked_forward`: (y, mean, var, dx, dw, dscale, dbias).

  Every row is normalised with the counted rows' mean and variance, so those receive the statistics' terms
  of the gradient, summed over all rows: dz = inv (dxhat - [counted] (sum dxhat + xhat sum dxhat xhat) / n)."""
  y, mean, var, (x, w, z, inv, xhat, a, rw, first) = _np_masked_forward(x, w, b, scale, bias, mask, pad, eps, pool,
                                                                        rnd)
  if pool:
    n, h, wd, c = z.shape
    gw = np.zeros_like(rw)
    np.put_along_axis(gw, first[..., None], dy[..., None], -1)
    g = gw.reshape(n, h // pool, wd // pool, c, pool, pool).transpose(0, 1, 4, 2, 5, 3).reshape(z.shape)
  else:
    g = dy
  g = g * (a > 0)
  dscale, dbias = (g * xhat).sum((0, 1, 2)), g.sum((0, 1, 2))
  dxhat = g * scale
  cnt = (mask > 0).sum() * z.shape[1] * z.shape[2]
  counted = (mask > 0).reshape(-1, 1, 1, 1)
  dz = inv * (dxhat - counted * (dxhat.sum((0, 1, 2)) + xhat * (dxhat * xhat).sum((0, 1, 2))) / cnt)
  dx, dw = references.np_conv_grads(x, w, pad, rnd(dz))
  return y, mean, var, dx, dw, dscale, dbias


def _case(seed, n=5, hw=(8, 6), cin=6, cout=8, k=3, pad=1, pool=2):
  rng = np.random.default_rng(seed)
  mask = np.array([0, 1, 1, 0, 1] + [1] * (n - 5), np.float64)[:n]  # a padding row first: not the shift row
  x = rng.normal(size=(n,) + hw + (cin,))
  x[mask == 0] = 9.0 + 3 * rng.normal(size=x[mask == 0].shape)   # padding rows far off: counted, they would
  w = rng.normal(size=(k, k, cin, cout)) / (k * np.sqrt(cin))      # move the statistics a lot
  b = rng.normal(size=cout) * 0.5 + 1.0
  scale, bias = 1 + 0.3 * rng.normal(size=cout), 0.3 * rng.normal(size=cout)
  oh, ow = hw[0] + 2 * pad - k + 1, hw[1] + 2 * pad - k + 1
  dy = rng.normal(size=(n, oh // (pool or 1), ow // (pool or 1), cout))
  return x, w, b, scale, bias, mask, dy


def test_numpy_reference_gradient_matches_finite_differences():
  """The hand-written float64 backward above is the derivative of its forward (central differences along
  random directions), so the block is checked against something independently right."""
  x, w, b, scale, bias, mask, dy = _case(0)
  rng = np.random.default_rng(1)
  _, _, _, dx, dw, dscale, dbias = _np_masked_block(x, w, b, scale, bias, mask, 1, 1e-4, 2, dy)
  args = [x, w, scale, bias]
  for i, grad in enumerate((dx, dw, dscale, dbias)):
    v = rng.normal(size=args[i].shape)

    def loss(t, i=i, v=v):
      a = list(args)
      a[i] = a[i] + t * v
      return np.sum(_np_masked_forward(a[0], a[1], b, a[2], a[3], mask, 1, 1e-4, 2)[0] * dy)

    h = 1e-6
    fd = (loss(h) - loss(-h)) / (2 * h)
    np.testing.assert_allclose(np.sum(grad * v), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize('plan,pool', [(None, 2), (None, 0), (('xla', 'xla', 'taps'), 2), (('gemm', 'gemm', 'gemm'), 0),
                                       (('gemm', 'xla', 'cols_t'), 2)])
def test_masked_block_float32_equals_numpy_float64(plan, pool):
  """Padded batch, float32: output, statistics and all gradients equal the float64 reference; the padding rows
  (far-off values) do not move the statistics; the conv bias's gradient is exactly 0."""
  x, w, b, scale, bias, mask, dy = _case(2, pool=pool)
  spec = fused_block.BlockSpec(pad=1, bn='batch', eps=1e-4, act='relu', slope=0.0, pool=pool, dtype='float32',
                               conv='gemm' if plan else 'xla', plan=plan)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  c = w.shape[-1]
  (y, bm, bv), vjp = jax.vjp(lambda *a: fused_block.conv_block(spec, *a, jnp.zeros(c), jnp.ones(c), f32(mask)),
                             f32(x), f32(w), f32(b), f32(scale), f32(bias))
  dx, dw, db, dscale, dbias = vjp((f32(dy), jnp.zeros(c), jnp.zeros(c)))
  want = _np_masked_block(x, w, b, scale, bias, mask, 1, 1e-4, pool, dy)
  for name, got, ref in zip(('y', 'mean', 'var', 'dx', 'dw', 'dscale', 'dbias'), (y, bm, bv, dx, dw, dscale, dbias),
                            want):
    assert got.dtype == jnp.float32 and got.shape == ref.shape, name
    np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=0, atol=1e-4 * np.abs(ref).max(), err_msg=name)
  np.testing.assert_array_equal(np.asarray(db), 0.0)
  # the far-off padding rows would shift the statistics if they were counted (the test can fail)
  z = references.np_conv(x, w, 1) + b
  assert np.abs(z.mean((0, 1, 2)) - want[1]).max() > 1.0


@pytest.mark.parametrize('plan', [None, ('xla', 'xla', 'taps'), ('gemm', 'gemm', 'gemm')])
def test_masked_block_bfloat16_close_to_numpy_float64(plan):
  """Padded batch, bfloat16 compute: equals the float64 reference with bf16 roundings modelled (up to float32
  accumulation order and rare rounding-boundary flips), and the unrounded one within bf16 rounding."""
  x, w, b, scale, bias, mask, dy = _case(3, cin=16, cout=16, hw=(8, 8))
  spec = fused_block.BlockSpec(pad=1, bn='batch', eps=1e-5, act='relu', slope=0.0, pool=2, dtype='bfloat16',
                               conv='gemm', plan=plan)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  (y, bm, bv), vjp = jax.vjp(lambda *a: fused_block.conv_block(spec, *a, jnp.zeros(16), jnp.ones(16), f32(mask)),
                             f32(x), f32(w), f32(b), f32(scale), f32(bias))
  assert y.dtype == jnp.bfloat16
  dx, dw, db, dscale, dbias = vjp((jnp.asarray(dy, jnp.bfloat16), jnp.zeros(16), jnp.zeros(16)))
  got = (y, bm, bv, dx, dw, dscale, dbias)
  for rnd, tol in ((_bf16, 1e-2), (lambda a: a, 0.1)):
    want = _np_masked_block(x, w, b, scale, bias, mask, 1, 1e-5, 2, _bf16(dy), rnd=rnd)
    for name, g, r in zip(('y', 'mean', 'var', 'dx', 'dw', 'dscale', 'dbias'), got, want):
      g = np.asarray(g, np.float64)
      rel = np.sqrt(np.mean((g - r) ** 2) / np.mean(r ** 2))
      assert rel < tol, (name, rel)
  assert np.abs(np.asarray(db)).max() < 1e-6


def test_mask_of_the_wrong_length_is_a_one_line_error():
  spec = fused_block.BlockSpec(pad=1, bn='batch', eps=1e-5, act='relu', slope=0.0, pool=0, dtype='float32', conv='xla')
  x, w = jnp.zeros((4, 6, 6, 3)), jnp.zeros((3, 3, 3, 5))
  with pytest.raises(ValueError, match=r'mask has shape \(3,\); expected \(4,\)'):
    fused_block.conv_block(spec, x, w, jnp.zeros(5), jnp.ones(5), jnp.zeros(5), jnp.zeros(5), jnp.ones(5),
                           jnp.ones(3))


def _step_temp_bytes(dtype, padded, n=8, size=64):
  """XLA temp space of the compiled gradient of VGG_NOPT's feature stack (fused blocks) at batch n, size²:
  with `padded` the batch carries a row mask, as the epoch's last batch does."""
  net = feature_stack.FeatureStack(feature_stack.VGG11_FEATURES[:9], vgg=True, fused=True, dtype=jnp.dtype(dtype))
  x = jax.ShapeDtypeStruct((n, size, size, 3), jnp.float32)
  v = jax.eval_shape(functools.partial(net.init, train=True), jax.random.PRNGKey(0), x)
  mask = jax.ShapeDtypeStruct((n,), jnp.float32) if padded else None

  def loss(p, stats, x, mask):
    out, upd = net.apply({'params': p, 'batch_stats': stats}, x, True, mask, mutable=['batch_stats'])
    return jnp.sum(out.astype(jnp.float32) ** 2), upd

  f = jax.jit(jax.grad(loss, has_aux=True))
  return f.lower(v['params'], v['batch_stats'], x, mask).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize('dtype', ['bfloat16', 'float32'])
def test_padded_batch_needs_no_more_temp_memory_than_a_full_one(dtype):
  """The padded batch runs in the fused blocks: its compiled step needs no more XLA temp space than the
  unpadded one (the conv + unfused masked BatchNorm it replaced kept full-size float32 BN temporaries: 1.3x
  (float32) and 1.5x (bfloat16) here, 2x on FCDD_CNN224_VGG_NOPT bf16 at batch 32, the run's peak memory)."""
  plain, padded = _step_temp_bytes(dtype, False), _step_temp_bytes(dtype, True)
  assert padded <= 1.05 * plain, (padded, plain)


def test_a_bf16_gemm_block_exports_with_a_symbolic_batch():
  """jax.export of a bf16 'gemm' block whose weight gradient is one im2col GEMM (5x5, as FCDD_CNN28_W's) at a
  symbolic batch traces (whether to keep the im2col depends on its size, which is then symbolic) and computes
  what the block computes at a concrete batch."""
  spec = fused_block.BlockSpec(pad=2, bn=None, eps=1e-5, act='leaky', slope=0.01, pool=2, dtype='bfloat16',
                               conv='gemm', plan=('gemm', 'gemm', 'gemm'))
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(5, 5, 8, 16)) * 0.1, jnp.float32)
  b = jnp.asarray(rng.normal(size=(16,)), jnp.float32)
  none = jnp.zeros((0,), jnp.float32)
  f = jax.jit(lambda x: fused_block.conv_block(spec, x, w, b, none, none, none, none)[0])
  shape = jax.export.symbolic_shape('b, 14, 14, 8')
  exported = jax.export.export(f)(jax.ShapeDtypeStruct(shape, jnp.bfloat16))
  x = jnp.asarray(rng.normal(size=(3, 14, 14, 8)), jnp.bfloat16)
  got, want = exported.call(x), f(x)
  assert got.shape == (3, 7, 7, 16)
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))

"""Networks: parameter counts (spec §1.3/§1.6), shapes, a NumPy forward pass, BatchNorm semantics, init."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcdd_jax.models import feature_stack
from fcdd_jax.models import layers
from fcdd_jax.models import nets as models
from tests import references

SPEC_COUNTS = {
    'FCDD_CNN28': 3457, 'FCDD_CNN28_W': 413441, 'FCDD_CNN32': 258945, 'FCDD_CNN32_S': 93569,
    'FCDD_CNN32_LW3K': 1185281, 'FCDD_CNN224': 247569, 'FCDD_CNN224_VGG': 4504833,
    'FCDD_CNN224_VGG_F': 4504833, 'FCDD_CNN224_VGG_NOPT': 4504833,
}


def count_params(params):
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def _init_shapes(name, n=2):
  net = models.create(name)
  h, w, c = models.input_shape(name)
  x = jax.ShapeDtypeStruct((n, h, w, c), jnp.float32)
  v = jax.eval_shape(lambda x: net.init({'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)}, x), x)
  out = jax.eval_shape(lambda v, x: net.apply(v, x), v, x)
  return v, out


@pytest.mark.parametrize('name', sorted(SPEC_COUNTS))
def test_parameter_counts_used_by_the_forward_pass(name):
  v, out = _init_shapes(name)
  assert count_params(v['params']) == SPEC_COUNTS[name]
  assert set(v) == {'params', 'batch_stats'}
  hw = 7 if '28' in name else (8 if '32' in name else 28)
  assert out.shape == (2, hw, hw, 1)


@pytest.mark.parametrize('name,dim', [('CNN28', 48), ('CNN28_W', 48), ('CNN32', 64), ('CNN32_LW3K', 64),
                                      ('CNN224', 784)])
def test_hsc_output_shapes(name, dim):
  _, out = _init_shapes(name)
  assert out.shape == (2, dim)
  assert models.objective_of(name) == 'hsc'
  assert models.create(name).fcdd_counterpart in models.FCDD_NAMES


@pytest.mark.parametrize('name', ['AE28', 'AE28_W', 'AE32', 'AE32_LW3K', 'AE224'])
def test_ae_output_shapes(name):
  _, out = _init_shapes(name)
  h, w, c = models.input_shape(name)
  assert out.shape == (2, h, w, 3 if name.startswith('AE32') else c)


def test_vgg_frozen_mask_and_trainable_count():
  v, _ = _init_shapes('FCDD_CNN224_VGG_F')
  mask = models.frozen_mask('FCDD_CNN224_VGG_F', v['params'])
  frozen = sum(int(np.prod(p.shape)) for p, f in zip(jax.tree.leaves(v['params']), jax.tree.leaves(mask)) if f)
  assert frozen == 962304 and SPEC_COUNTS['FCDD_CNN224_VGG_F'] - frozen == 3542529
  assert not any(jax.tree.leaves(models.frozen_mask('FCDD_CNN224_VGG', v['params'])))


def np_conv(x, k, b, pad):
  return references.np_conv(x, k, pad) + b


def np_pool(x):
  n, h, w, c = x.shape
  return x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4))


def test_fcdd_cnn28_forward_equals_numpy_in_train_and_eval_mode():
  net = models.create('FCDD_CNN28')
  x = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype(np.float32)
  v = net.init(jax.random.PRNGKey(0), jnp.asarray(x))
  p = jax.tree.map(np.asarray, v['params'])
  f = p['features']
  # eval mode: BN with running stats (initial mean 0, var 1, eps 1e-4)
  def forward(bn):
    h = np_conv(x.astype(np.float64), f['conv0']['kernel'], f['conv0']['bias'], 2)
    h = bn(h) * f['bn0']['scale'] + f['bn0']['bias']
    h = np.where(h > 0, h, 0.01 * h)
    h = np_pool(h)
    h = np_pool(np_conv(h, f['conv2']['kernel'], f['conv2']['bias'], 2))
    return np_conv(h, p['final']['kernel'], p['final']['bias'], 0)
  want = forward(lambda h: h / np.sqrt(1 + 1e-4))
  np.testing.assert_allclose(np.asarray(net.apply(v, jnp.asarray(x))), want, rtol=1e-4, atol=1e-5)
  # train mode: batch statistics (biased variance), running var updated with the unbiased one
  got, upd = net.apply(v, jnp.asarray(x), train=True, mutable=['batch_stats'])
  h0 = np_conv(x.astype(np.float64), f['conv0']['kernel'], f['conv0']['bias'], 2)
  mu, var = h0.mean((0, 1, 2)), h0.var((0, 1, 2))
  want = forward(lambda h: (h - mu) / np.sqrt(var + 1e-4))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
  n = h0.shape[0] * h0.shape[1] * h0.shape[2]
  bs = upd['batch_stats']['features']['bn0']
  np.testing.assert_allclose(np.asarray(bs['mean']), 0.1 * mu, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(bs['var']), 0.9 + 0.1 * var * n / (n - 1), rtol=1e-4)
  biased = models.create('FCDD_CNN28', bn_unbiased_var=False)
  _, upd2 = biased.apply(v, jnp.asarray(x), train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(np.asarray(upd2['batch_stats']['features']['bn0']['var']), 0.9 + 0.1 * var, rtol=1e-4)


def test_torch_default_init_bounds():
  v = models.create('FCDD_CNN28_W').init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  k = np.asarray(v['params']['features']['conv2']['kernel'])
  bound = 1 / np.sqrt(128 * 25)
  assert np.abs(k).max() <= bound and np.abs(k).max() > 0.95 * bound
  assert np.std(k) == pytest.approx(bound / np.sqrt(3), rel=0.02)  # uniform(-b, b)
  flax_init = models.create('FCDD_CNN28_W', torch_init=False).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  assert not np.any(np.asarray(flax_init['params']['features']['conv2']['bias']))


def test_frozen_bn_option_uses_running_stats():
  net = models.create('FCDD_CNN224_VGG_F', frozen_bn='frozen')
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 224, 224, 3)), jnp.float32)
  v = jax.jit(net.init)(jax.random.PRNGKey(0), x)
  _, upd = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=['batch_stats']))(v, x)
  bs = upd['batch_stats']['features']
  np.testing.assert_array_equal(np.asarray(bs['features_1']['mean']), 0)     # frozen: not updated
  assert np.abs(np.asarray(bs['features_16']['mean'])).max() > 0            # trainable BN: updated


def test_errors():
  with pytest.raises(ValueError, match="unknown net 'NOPE'; known nets: FCDD_CNN28"):
    models.create('NOPE')
  net = models.create('FCDD_CNN28_W')
  with pytest.raises(ValueError, match=r'FCDD_CNN28_W takes inputs \[N,28,28,C\]; got shape \(1, 32, 32, 1\)'):
    net.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  net = models.create('FCDD_CNN32_S', dtype=jnp.bfloat16)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  v = net.init(jax.random.PRNGKey(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v['params']))
  out = net.apply(v, x)
  ref = models.create('FCDD_CNN32_S').apply(v, x)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0.1, atol=0.05)


def test_gemm_weight_gradient_conv_equals_xla_conv():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 9, 7, 40)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 40, 16)) * 0.1, jnp.float32)
  dy = jnp.asarray(rng.normal(size=(3, 9, 7, 16)), jnp.float32)
  ref = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), [(1, 1)] * 2, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(np.asarray(layers.conv_s1(x, w, 1)), np.asarray(ref(x, w)), rtol=1e-5, atol=1e-5)
  g1 = jax.vjp(lambda x, w: layers.conv_s1(x, w, 1), x, w)[1](dy)
  g2 = jax.vjp(ref, x, w)[1](dy)
  for a, b in zip(g1, g2):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# bfloat16 GEMM convolution (fcdd_jax.models.cpu.cpu_conv) against an independent NumPy float64 reference

def _bf16_round(a):
  return np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


@pytest.mark.parametrize('k,pad', [(3, 0), (3, 1), (3, 2), (3, 3), (5, 0), (5, 1), (5, 2), (1, 0)])
def test_gemm_conv_forward_and_gradients_equal_numpy_float64(k, pad):
  from fcdd_jax.models.cpu import cpu_conv  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(k * 10 + pad)
  x = rng.normal(size=(3, 9, 7, 20))
  w = rng.normal(size=(k, k, 20, 12)) / k
  y_shape = (3, 9 + 2 * pad - k + 1, 7 + 2 * pad - k + 1, 12)
  dy = rng.normal(size=y_shape)
  y, vjp = jax.vjp(lambda a, b: cpu_conv.gemm_conv(a, b, pad, jnp.bfloat16), jnp.asarray(x, jnp.float32),
                   jnp.asarray(w, jnp.float32))
  dx, dw = vjp(jnp.asarray(dy, jnp.float32))
  assert y.shape == y_shape and y.dtype == jnp.float32
  assert dx.dtype == jnp.float32 and dw.dtype == jnp.float32  # float32 params get float32 gradients
  y, dx, dw = (np.asarray(a, np.float64) for a in (y, dx, dw))
  # (1) Exact arithmetic on the bf16-rounded operands: products are exact and sums accumulate in float32.
  xr, wr, dyr = _bf16_round(x), _bf16_round(w), _bf16_round(dy)
  y_ref = references.np_conv(xr, wr, pad)
  dx_ref, dw_ref = references.np_conv_grads(xr, wr, pad, dyr)
  for got, ref in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * np.abs(ref).max())
  # (2) Against the unrounded float64 convolution: bf16 input rounding only (relative 2^-9 per operand).
  y_ref = references.np_conv(x, w, pad)
  dx_ref, dw_ref = references.np_conv_grads(x, w, pad, dy)
  for got, ref in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < 1.5e-2, err
    assert np.sqrt(np.mean((got - ref) ** 2) / np.mean(ref ** 2)) < 5e-3


def test_gemm_conv_bfloat16_input_keeps_bfloat16_input_gradient():
  from fcdd_jax.models.cpu import cpu_conv  # pylint: disable=g-import-not-at-top
  x = jnp.ones((2, 6, 6, 16), jnp.bfloat16)
  w = jnp.ones((3, 3, 16, 4), jnp.float32)
  dx, dw = jax.grad(lambda a, b: jnp.sum(cpu_conv.gemm_conv(a, b, 1)), argnums=(0, 1))(x, w)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(dw, np.float64), references.np_conv_grads(
      np.ones((2, 6, 6, 16)), np.ones((3, 3, 16, 4)), 1, np.ones((2, 6, 6, 4)))[1])


def test_gemm_conv_selection():
  assert layers.use_gemm_conv(jnp.bfloat16, 1, 128, backend='cpu')
  assert not layers.use_gemm_conv(jnp.float32, 1, 128, backend='cpu')  # float32 path unchanged
  assert not layers.use_gemm_conv(jnp.float16, 1, 128, backend='cpu')
  assert not layers.use_gemm_conv(jnp.bfloat16, 1, 128, backend='gpu')
  assert not layers.use_gemm_conv(jnp.bfloat16, 1, 128, backend='tpu')
  assert not layers.use_gemm_conv(jnp.bfloat16, 2, 128, backend='cpu')
  assert layers.use_gemm_conv(jnp.bfloat16, 1, 3, backend='cpu')  # first layers too (faster than XLA conv)


@pytest.mark.parametrize('name', ['FCDD_CNN28_W', 'FCDD_CNN32_LW3K'])
def test_bfloat16_net_gradients_close_to_float32(name):
  """The whole bf16 net (GEMM convs on CPU) vs float32: same loss and parameter gradients up to bf16
  rounding (cosine similarity of every gradient > 0.99)."""
  h, w, c = models.input_shape(name)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, h, w, c)), jnp.float32)
  n32, n16 = models.create(name), models.create(name, dtype=jnp.bfloat16)
  v = jax.jit(n32.init)(jax.random.PRNGKey(0), x)

  def loss(net):
    def f(p):
      out, _ = net.apply({'params': p, 'batch_stats': v['batch_stats']}, x, train=True, mutable=['batch_stats'])
      return jnp.mean(jnp.sqrt(out ** 2 + 1) - 1)
    return jax.jit(jax.value_and_grad(f))(v['params'])   # one program (eager: one compile per operation)

  (l32, g32), (l16, g16) = loss(n32), loss(n16)
  assert abs(float(l16) - float(l32)) < 0.02 * abs(float(l32)) + 1e-3
  scale = max(np.linalg.norm(np.asarray(b)) for b in jax.tree.leaves(g32))
  for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)):
    assert a.dtype == jnp.float32
    a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
    if np.linalg.norm(b) < 1e-6 * scale:  # e.g. the bias of a conv followed by BatchNorm: exactly 0 in theory
      assert np.linalg.norm(a) < 1e-2 * scale
      continue
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99


@pytest.mark.parametrize('jit', [False, True])
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('k', [2, 3])
def test_max_pool_gradient_goes_to_first_maximum(k, dtype, jit):
  """Non-overlapping max pool, float32 and bf16, eager and jitted: same forward as NumPy's max; its gradient goes
  to the first maximum of each window (row-major, like PyTorch), also with ties, checked against NumPy."""
  rng = np.random.default_rng(0)
  x = rng.integers(-3, 4, size=(2, 3 * k, 2 * k, 5)).astype(np.float32)  # small integers: many ties
  g = rng.normal(size=(2, 3, 2, 5)).astype(np.float32)
  xb, gb = jnp.asarray(x, dtype), jnp.asarray(g, dtype)

  def pool_and_grad(a, ct):
    y, vjp = jax.vjp(lambda t: layers.max_pool(t, k, k, 0), a)
    return y, vjp(ct)[0]

  y, dx = (jax.jit(pool_and_grad) if jit else pool_and_grad)(xb, gb)
  assert y.dtype == dx.dtype == jnp.dtype(dtype)
  xr = x.reshape(2, 3, k, 2, k, 5)
  np.testing.assert_array_equal(np.asarray(y, np.float32), xr.max(axis=(2, 4)))
  want = np.zeros_like(xr)
  gq = np.asarray(gb, np.float32)
  for n, a, b, c in np.ndindex(2, 3, 2, 5):
    win = xr[n, a, :, b, :, c]
    i, j = np.unravel_index(np.argmax(win), win.shape)  # first maximum, row-major
    want[n, a, i, b, j, c] = gq[n, a, b, c]
  np.testing.assert_array_equal(np.asarray(dx, np.float32), want.reshape(x.shape))


def test_max_pool_gradient_nan_and_inf():
  """A window holding NaN pools to NaN and sends its gradient to the (first) NaN; -inf windows pool to -inf."""
  x = np.array([[1.0, np.nan], [np.nan, 5.0]], np.float32).reshape(1, 2, 2, 1)
  x = np.concatenate([x, np.full((1, 2, 2, 1), -np.inf, np.float32)], axis=2)
  y, vjp = jax.vjp(lambda t: layers.max_pool(t, 2, 2, 0), jnp.asarray(x))
  (dx,) = vjp(jnp.ones_like(y))
  assert np.isnan(np.asarray(y)[0, 0, 0, 0]) and np.asarray(y)[0, 0, 1, 0] == -np.inf
  np.testing.assert_array_equal(np.asarray(dx)[0, :, :2, 0], [[0, 1], [0, 0]])
  np.testing.assert_array_equal(np.asarray(dx)[0, :, 2:, 0], [[1, 0], [0, 0]])


@pytest.mark.parametrize('vgg,hw,cin,c', [(False, (28, 28), 1, 128), (True, (28, 28), 3, 128)])
def test_plain_block_gradients_under_jit_equal_numpy_float64(vgg, hw, cin, c):
  """The plain Flax path of a conv -> BN -> activation (leaky ReLU; VGG: ReLU) -> 2x2 pool block (no fused
  blocks: the GPU/TPU default, CPU with remat=False), jitted as the train step is, against the NumPy float64
  forward/backward. Under jit, a gradient mask `x == max` taken after XLA had recomputed the BN/activation in
  another fusion missed the maximum and dropped gradients (FCDD_CNN28_W's bn0 bias gradient off by 30 %; these
  shapes showed it, smaller ones did not)."""
  x, w, b, scale, bias, mean, var, dy = _block_case(5, 3, 1, 2, c_in=cin, c_out=c, n=4, hw=hw)
  layers_spec = [('conv', c, 3, 1, 1, True, True) + ((0,) if vgg else ()), ('pool', 2, 2, 0)]
  stack = feature_stack.FeatureStack(layers_spec, vgg=vgg, fused=False)
  cname, bname = ('features_0', 'features_1') if vgg else ('conv0', 'bn0')
  v = stack.init(jax.random.PRNGKey(0), jnp.asarray(x, jnp.float32), True)
  params = {cname: {'kernel': jnp.asarray(w, jnp.float32), 'bias': jnp.asarray(b, jnp.float32)},
            bname: {'scale': jnp.asarray(scale, jnp.float32), 'bias': jnp.asarray(bias, jnp.float32)}}
  assert jax.tree.structure(params) == jax.tree.structure(v['params'])

  @jax.jit
  def forward_and_grads(p, xin, ct):
    def f(p, xin):
      return stack.apply({'params': p, 'batch_stats': v['batch_stats']}, xin, True, mutable=['batch_stats'])[0]
    y, vjp = jax.vjp(f, p, xin)
    return y, vjp(ct)

  y, (gp, gx) = forward_and_grads(params, jnp.asarray(x, jnp.float32), jnp.asarray(dy, jnp.float32))
  want_y, want_dx, want_dw, _, want_dscale, want_dbias = _np_block(
      x, w, b, scale, bias, mean, var, 1, 'batch', 1e-5 if vgg else 1e-4, 'relu' if vgg else 'leaky', layers.LEAKY,
      2, dy)
  np.testing.assert_allclose(np.asarray(y), want_y, rtol=1e-4, atol=1e-5)
  for got, want, what in [(gx, want_dx, 'dx'), (gp[cname]['kernel'], want_dw, 'dw'),
                          (gp[bname]['scale'], want_dscale, 'dscale'), (gp[bname]['bias'], want_dbias, 'dbias')]:
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-4 * np.abs(want).max(), err_msg=what)


# ----------------------------------------------------------------------------------------------------
# Fused conv-BN-activation-pool blocks (fused_block.conv_block, the `remat` option) against NumPy float64

def _np_block(x, w, b, scale, bias, mean, var, pad, bn, eps, act, slope, pool, dy, rnd=lambda a: a):
  """float64 forward and backward of conv(+b) -> BN -> activation -> k x k max pool, written out by hand:
  returns (y, dx, dw, db, dscale, dbias). BN 'batch' uses the biased batch variance; the pool's gradient goes to
  the first maximum of each window (row-major) and an activation at exactly 0 takes the negative slope
  (PyTorch's conventions). `rnd` models a low-precision compute dtype: applied to the conv operands (x, w, and
  the conv output's cotangent), the conv output and the BN output."""
  x, w = rnd(x), rnd(w)
  z = rnd(references.np_conv(x, w, pad) + b)
  if bn == 'batch':
    mean, var = z.mean((0, 1, 2)), z.var((0, 1, 2))
  inv = 1 / np.sqrt(var + eps) if bn else 1.0
  xhat = (z - mean) * inv if bn else z
  a = rnd(xhat * scale + bias if bn else xhat)
  slope_of = {'relu': 0.0, 'leaky': slope, None: 1.0}[act]
  r = rnd(np.where(a > 0, a, a * slope_of))
  n, h, wd, c = r.shape
  if pool:
    rw = r.reshape(n, h // pool, pool, wd // pool, pool, c).transpose(0, 1, 3, 5, 2, 4).reshape(
        n, h // pool, wd // pool, c, pool * pool)
    first = np.argmax(rw, axis=-1)  # first maximum, row-major
    y = np.take_along_axis(rw, first[..., None], -1)[..., 0]
    gw = np.zeros_like(rw)
    np.put_along_axis(gw, first[..., None], dy[..., None], -1)
    g = gw.reshape(n, h // pool, wd // pool, c, pool, pool).transpose(0, 1, 4, 2, 5, 3).reshape(r.shape)
  else:
    y, g = r, dy
  g = g * np.where(a > 0, 1.0, slope_of)
  if bn:
    dscale, dbias = (g * xhat).sum((0, 1, 2)), g.sum((0, 1, 2))
    dxhat = g * scale
    if bn == 'batch':
      m = z.size // c
      dz = inv / m * (m * dxhat - dxhat.sum((0, 1, 2)) - xhat * (dxhat * xhat).sum((0, 1, 2)))
    else:
      dz = dxhat * inv
  else:
    dscale = dbias = None
    dz = g
  dx, dw = references.np_conv_grads(x, w, pad, rnd(dz))
  return y, dx, dw, dz.sum((0, 1, 2)), dscale, dbias


def _block_case(seed, k, pad, pool, c_in=6, c_out=8, n=3, hw=(8, 6)):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n,) + hw + (c_in,))
  w = rng.normal(size=(k, k, c_in, c_out)) / (k * np.sqrt(c_in))
  b = rng.normal(size=c_out) * 0.5 + 1.0   # offsets: the batch statistics must remove them
  scale, bias = 1 + 0.3 * rng.normal(size=c_out), 0.3 * rng.normal(size=c_out)
  mean, var = 0.2 * rng.normal(size=c_out), 0.5 + rng.uniform(size=c_out)
  oh, ow = hw[0] + 2 * pad - k + 1, hw[1] + 2 * pad - k + 1
  dy = rng.normal(size=(n, oh // (pool or 1), ow // (pool or 1), c_out))
  return x, w, b, scale, bias, mean, var, dy


@pytest.mark.parametrize('conv', ['xla', 'gemm', 'xla/gemm/taps', 'gemm/xla/cols_t', 'xla/xla/gemm', 'gemm/gemm/filter'])
@pytest.mark.parametrize('bn,act,pool,k,pad,cin', [
    ('batch', 'relu', 2, 3, 1, 6), ('batch', 'leaky', 2, 5, 2, 6), ('batch', 'relu', 0, 3, 1, 6),
    ('running', 'relu', 2, 3, 1, 6), ('running', 'leaky', 0, 3, 0, 6), (None, None, 2, 5, 2, 6),
    (None, 'leaky', 0, 1, 0, 6), ('batch', 'relu', 2, 3, 1, 3), ('batch', 'leaky', 0, 5, 2, 1)])
def test_conv_block_float32_forward_and_gradients_equal_numpy_float64(conv, bn, act, pool, k, pad, cin):
  from fcdd_jax.models.cpu import fused_block  # pylint: disable=g-import-not-at-top
  x, w, b, scale, bias, mean, var, dy = _block_case(k * 7 + pad + (pool or 0), k, pad, pool, c_in=cin)
  plan = tuple(conv.split('/')) if '/' in conv else None  # every way of computing the conv and its gradients
  spec = fused_block.BlockSpec(pad=pad, bn=bn, eps=1e-4, act=act, slope=0.01, pool=pool, dtype='float32',
                            conv=conv if plan is None else 'gemm', plan=plan)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  none = jnp.zeros((0,), jnp.float32)
  sc, bi = (f32(scale), f32(bias)) if bn else (none, none)
  (y, bm, bv), vjp = jax.vjp(lambda *a: fused_block.conv_block(spec, *a, f32(mean), f32(var)),
                             f32(x), f32(w), f32(b), sc, bi)
  ct = (f32(dy), jnp.zeros_like(bm), jnp.zeros_like(bv))
  got = (y,) + vjp(ct)
  want = _np_block(x, w, b, scale, bias, mean, var, pad, bn, 1e-4, act, 0.01, pool, dy)
  names = ('y', 'dx', 'dw', 'db', 'dscale', 'dbias')
  for name, g, r in zip(names, got, want):
    if r is None:
      assert g.shape == (0,)
      continue
    assert g.dtype == jnp.float32 and g.shape == r.shape, name
    tol = 1e-4 * max(np.abs(r).max(), 1e-3 if name != 'db' else np.abs(want[2]).max())
    np.testing.assert_allclose(np.asarray(g, np.float64), r, rtol=0, atol=tol, err_msg=name)
  if bn == 'batch':  # the statistics returned for the running averages: batch mean, biased variance
    z = references.np_conv(x, w, pad) + b
    np.testing.assert_allclose(np.asarray(bm), z.mean((0, 1, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bv), z.var((0, 1, 2)), rtol=1e-4)
  else:
    np.testing.assert_array_equal(np.asarray(bm), np.asarray(f32(mean)))


@pytest.mark.parametrize('act,pool,plan', [('relu', 2, None), ('leaky', 0, None), ('relu', 2, ('xla', 'xla', 'taps')),
                                           ('leaky', 2, ('gemm', 'gemm', 'cols_t'))])
def test_conv_block_bfloat16_close_to_numpy_float64(act, pool, plan):
  """bf16 compute (GEMMs on bf16 operands, f32 accumulation, z and the output rounded to bf16) equals the
  float64 block with those roundings, and is within bf16 rounding of the unrounded one; parameter gradients
  stay float32."""
  from fcdd_jax.models.cpu import fused_block  # pylint: disable=g-import-not-at-top
  x, w, b, scale, bias, mean, var, dy = _block_case(3, 3, 1, pool, c_in=16, c_out=16, n=4, hw=(8, 8))
  spec = fused_block.BlockSpec(pad=1, bn='batch', eps=1e-5, act=act, slope=0.01, pool=pool, dtype='bfloat16',
                            conv='gemm', plan=plan)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  (y, _, _), vjp = jax.vjp(lambda *a: fused_block.conv_block(spec, *a, f32(mean), f32(var)),
                           f32(x), f32(w), f32(b), f32(scale), f32(bias))
  assert y.dtype == jnp.bfloat16
  got = (y,) + vjp((jnp.asarray(dy, jnp.bfloat16), jnp.zeros(16), jnp.zeros(16)))
  args = (x, w, b, scale, bias, mean, var, 1, 'batch', 1e-5, act, 0.01, pool, _bf16_round(dy))
  for rnd, tol in ((_bf16_round, 1e-2), (lambda a: a, 0.15)):
    want = _np_block(*args, rnd=rnd)
    for name, g, r in zip(('y', 'dx', 'dw', 'db', 'dscale', 'dbias'), got, want):
      assert g.dtype == (jnp.bfloat16 if name == 'y' else jnp.float32), name
      g = np.asarray(g, np.float64)
      if name == 'db':  # exactly 0 in theory (the batch mean removes the bias)
        assert np.abs(g).max() < 1e-6
        continue
      rel = np.sqrt(np.mean((g - r) ** 2) / np.mean(r ** 2))
      # modelled roundings: f32 accumulation order only (and a rare BN output on a rounding boundary);
      # unrounded: bf16 rounding, and ties in the rounded pool windows send gradients elsewhere
      assert rel < tol, (name, rel)


def test_conv_block_pool_ties_route_the_gradient_to_the_first_maximum():
  """Equal values in a window (ReLU zeros aside, frequent with integer-valued or bf16 data): all of the window's
  gradient goes to the first maximum in row-major order."""
  from fcdd_jax.models.cpu import fused_block  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = rng.integers(-2, 3, size=(2, 6, 4, 3)).astype(np.float64)  # many ties
  w = np.eye(3).reshape(1, 1, 3, 3)
  dy = _bf16_round(rng.normal(size=(2, 3, 2, 3)))  # exact in both dtypes
  for dtype in ('float32', 'bfloat16'):
    spec = fused_block.BlockSpec(pad=0, bn=None, eps=0.0, act=None, slope=0.0, pool=2, dtype=dtype, conv='gemm')
    none = jnp.zeros((0,), jnp.float32)
    (y, _, _), vjp = jax.vjp(lambda a: fused_block.conv_block(spec, a, jnp.asarray(w, jnp.float32), none, none, none,
                                                           none, none), jnp.asarray(x, jnp.float32))
    (dx,) = vjp((jnp.asarray(dy, y.dtype), none, none))
    want = _np_block(x, w, np.zeros(3), None, None, None, None, 0, None, 0.0, None, 0.0, 2, dy)
    np.testing.assert_array_equal(np.asarray(y, np.float64), want[0])
    np.testing.assert_allclose(np.asarray(dx, np.float64), want[1], rtol=1e-2 if dtype == 'bfloat16' else 1e-6)


@pytest.mark.parametrize('name,size', [('FCDD_CNN28_W', None), ('FCDD_CNN32_LW3K', None), ('VGG', 16)])
def test_remat_does_not_change_outputs_gradients_or_statistics(name, size):
  """float32 nets with and without the fused blocks (remat=True/False), jitted: same init, outputs, parameter
  gradients and BN running statistics to float32 rounding (the BN-cancelled conv biases: 0 vs ~1e-9)."""
  if name == 'VGG':  # VGG_NOPT's feature stack on a small input (fully convolutional)
    mk = lambda remat: feature_stack.FeatureStack(feature_stack.VGG11_FEATURES[:9], vgg=True, fused=remat)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, size, size, 3)), jnp.float32)
  else:
    mk = lambda remat: models.create(name, remat=remat)
    h, w, c = models.input_shape(name)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, h, w, c)), jnp.float32)
  res = {}
  for remat in (False, True):
    net = mk(remat)
    v = net.init(jax.random.PRNGKey(0), x, True)

    def loss(p, net=net, v=v):
      out, upd = net.apply({'params': p, 'batch_stats': v['batch_stats']}, x, True, mutable=['batch_stats'])
      return jnp.sum(out * jnp.cos(jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape))), (out, upd)

    # jitted, as the train step is: XLA's fusions (not eager dispatch) decide what the backward recomputes
    (_, (out, upd)), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(v['params'])
    res[remat] = (v, out, upd, g)
  (v0, out0, upd0, g0), (v1, out1, upd1, g1) = res[False], res[True]
  assert jax.tree.structure(v0) == jax.tree.structure(v1)
  for a, b in zip(jax.tree.leaves(v0), jax.tree.leaves(v1)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same variables, same init
  np.testing.assert_allclose(np.asarray(out1), np.asarray(out0), rtol=0, atol=1e-5 * np.abs(out0).max())
  for a, b in zip(jax.tree.leaves(upd0), jax.tree.leaves(upd1)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
  scale = max(np.abs(np.asarray(a)).max() for a in jax.tree.leaves(g0))
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(g0)[0], jax.tree.leaves(g1)):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(b, a, rtol=0, atol=max(2e-5 * np.abs(a).max(), 1e-6 * scale),
                               err_msg=jax.tree_util.keystr(path))


def test_fused_blocks_selection():
  assert feature_stack.use_fused_blocks(None, backend='cpu')
  assert not feature_stack.use_fused_blocks(None, backend='gpu')
  assert not feature_stack.use_fused_blocks(None, backend='tpu')
  assert feature_stack.use_fused_blocks(True, backend='gpu')
  assert not feature_stack.use_fused_blocks(False, backend='cpu')

"""oneDNN convolutions through XLA FFI (fcdd_jax.models.cpu.onednn): forward and both gradients, float32 and bfloat16,
against XLA's convolution and an independent float64 NumPy reference, for every conv layer shape of the four
benchmark nets (small batches); the fused block on a padded last batch; whole nets; the fallback to XLA.

The oneDNN tests are skipped (with the reason) where the extension is not built or cannot load.
"""
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcdd_jax.models.cpu import fused_block
from fcdd_jax.models.cpu import onednn
from tests import fused_block_test
from tests import references
from tests.paths import ROOT

needs_onednn = pytest.mark.skipif(not onednn.load(), reason=f'oneDNN extension unavailable: {onednn.unavailable_reason()}')


def skip_unless_onednn_has(dtype):
  """Skips a oneDNN test of `dtype` convolutions where oneDNN has none on this CPU (bfloat16 without AVX-512;
  `test_bfloat16_without_onednn_support_runs_on_xla` tests what runs there instead)."""
  if not onednn.supports(jnp.dtype(dtype).name):
    pytest.skip(f'oneDNN has no {jnp.dtype(dtype).name} convolutions on this CPU ({onednn.info()})')

# (net, N, H=W, Cin, Cout, k, pad): every conv of FCDD_CNN28_W, FCDD_CNN32_LW3K, FCDD_CNN224_VGG_F/_NOPT (VGG_F's
# are a subset of VGG_NOPT's), the final 1x1 convs included
LAYERS = [
    ('cnn28w', 2, 28, 1, 128, 5, 2), ('cnn28w', 2, 14, 128, 128, 5, 2), ('cnn28w', 2, 7, 128, 1, 1, 0),
    ('lw3k', 2, 32, 3, 128, 3, 1), ('lw3k', 2, 16, 128, 256, 3, 1), ('lw3k', 2, 16, 256, 256, 3, 1),
    ('lw3k', 2, 8, 256, 128, 3, 1), ('lw3k', 2, 8, 128, 1, 1, 0),
    ('vgg', 1, 224, 3, 64, 3, 1), ('vgg', 1, 112, 64, 128, 3, 1), ('vgg', 1, 56, 128, 256, 3, 1),
    ('vgg', 1, 56, 256, 256, 3, 1), ('vgg', 1, 28, 256, 512, 3, 1), ('vgg', 1, 28, 512, 512, 3, 1),
    ('vgg', 1, 28, 512, 1, 1, 0),
]
IDS = [f'{l[0]}_{l[2]}px_{l[3]}to{l[4]}_k{l[5]}' for l in LAYERS]


def _round_bf16(a):
  return np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


@functools.lru_cache(maxsize=None)
def _case(layer):
  """Operands (float64, x / w / dy already rounded to bfloat16, so both dtypes share one float64 reference:
  bf16 products are exact in float32) and the NumPy float64 reference (y, dx, dw)."""
  _, n, hw, ci, co, k, pad = layer
  rng = np.random.default_rng(hash(layer) % 2**32)
  x = _round_bf16(rng.normal(size=(n, hw, hw, ci)))
  w = _round_bf16(rng.normal(size=(k, k, ci, co)) / np.sqrt(k * k * ci))
  oh = hw + 2 * pad - k + 1
  dy = _round_bf16(rng.normal(size=(n, oh, oh, co)))
  y = references.np_conv(x, w, pad)
  dx, dw = references.np_conv_grads(x, w, pad, dy)
  return (x, w, dy), (y, dx, dw)


def _xla_conv(x, w, pad, dtype):
  return jax.lax.conv_general_dilated(x.astype(dtype), w.astype(dtype), (1, 1), [(pad, pad)] * 2,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), preferred_element_type=jnp.float32)


def _value_and_grads(conv, x, w, dy, pad, dtype):
  """(y, dx, dw) of a conv function conv(x, w, pad, dtype) -> float32, x in `dtype`, w float32."""
  f = jax.jit(lambda x, w, dy: (lambda r: (r[0], *r[1](dy)))(jax.vjp(lambda a, b: conv(a, b, pad, dtype), x, w)))
  return [np.asarray(jnp.asarray(t, jnp.float32), np.float64) for t in f(x, w, dy)]


def _close(got, want, tol, name):
  err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
  assert err <= tol, f'{name}: max error {err:.2e} of max |ref| > {tol:.0e}'


@needs_onednn
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('layer', LAYERS, ids=IDS)
def test_conv_and_gradients_match_numpy_float64_and_xla(layer, dtype):
  """oneDNN's forward, input gradient and weight gradient equal the float64 reference (operands exactly
  representable in bf16: float32 accumulation is the only difference, plus the bf16 rounding of dx in bf16)
  and XLA's convolution in the same dtype. Shapes and dtypes: y float32, dx in x's dtype, dw float32."""
  skip_unless_onednn_has(dtype)
  (x, w, dy), ref = _case(layer)
  pad = layer[-1]
  dt = jnp.dtype(dtype)
  args = (jnp.asarray(x, dt), jnp.asarray(w, jnp.float32), jnp.asarray(dy, jnp.float32))
  got = _value_and_grads(onednn.conv, *args, pad, dtype)
  xla = _value_and_grads(_xla_conv, *args, pad, dtype)
  dx_tol = 1e-4 if dtype == 'float32' else 2 ** -8   # bf16: dx rounded to bf16 (XLA's too: ~1 ulp apart)
  for name, g, r, xl, tol in zip(('y', 'dx', 'dw'), got, ref, xla, (1e-4, dx_tol, 1e-4)):
    assert g.shape == r.shape, name
    _close(g, r, tol, f'{name} vs numpy')
    _close(g, xl, 2 * tol if dtype == 'float32' else 2 ** -7, f'{name} vs xla')  # XLA's bf16 dw is rounded to bf16
  f = jax.jit(lambda x, w: onednn.conv(x, w, pad, dtype))
  assert f(args[0], args[1]).dtype == jnp.float32
  dxt, dwt = jax.grad(lambda x, w: jnp.sum(onednn.conv(x, w, pad, dtype)), (0, 1))(args[0], args[1])
  assert dxt.dtype == dt and dwt.dtype == jnp.float32


@needs_onednn
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_forward_with_fused_bias_and_bf16_output(dtype):
  """conv_fwd's bias and output rounding (the fused block's z): float32 accumulation + bias, one rounding."""
  skip_unless_onednn_has(dtype)
  (x, w, _), (y, _, _) = _case(LAYERS[4])
  b = np.linspace(-1, 1, w.shape[-1])
  got = onednn.conv_fwd(jnp.asarray(x, dtype), jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32), 1, dtype)
  assert got.dtype == jnp.dtype(dtype)
  want = (jnp.asarray(y + b, jnp.float32)).astype(dtype)
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=2 ** -7 if dtype ==
                             'bfloat16' else 1e-5, atol=1e-4)


ONEDNN_PLAN = ('onednn', 'onednn', 'onednn')


@needs_onednn
@pytest.mark.parametrize('pool', [2, 0])
def test_masked_block_float32_equals_numpy_float64(pool):
  """The fused block on a padded last batch (mask) with oneDNN's convs: output, statistics and all gradients
  equal fused_block_test's float64 reference; the conv bias's gradient is exactly 0 (that test, oneDNN plan)."""
  fused_block_test.test_masked_block_float32_equals_numpy_float64(ONEDNN_PLAN, pool)


@needs_onednn
def test_masked_block_bfloat16_close_to_numpy_float64():
  """Padded batch, bfloat16: the float64 reference with bf16 roundings modelled, and the unrounded one."""
  skip_unless_onednn_has('bfloat16')
  fused_block_test.test_masked_block_bfloat16_close_to_numpy_float64(ONEDNN_PLAN)


@needs_onednn
def test_vmapped_conv_and_gradients_equal_xla():
  """Under vmap (several models as one program) the custom calls run once per mapped element."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 2, 8, 8, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 4, 5)), jnp.float32)
  f = lambda conv: jax.jit(jax.vmap(jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w, 1, 'float32'))),
                                                       (0, 1))))
  for got, want in zip(jax.tree.leaves(f(onednn.conv)(x, w)), jax.tree.leaves(f(_xla_conv)(x, w))):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


def _net_grads(name, impl, dtype, n=2, mask=None):
  """(output, parameter gradients) of net `name` in training mode with FCDD_CONV_IMPL=impl while tracing."""
  from bench import compare  # pylint: disable=g-import-not-at-top
  from fcdd_jax.models import nets as models  # pylint: disable=g-import-not-at-top
  net = models.create(name, dtype=jnp.dtype(dtype))
  shape = models.input_shape(name)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(n,) + shape), jnp.float32)
  v = net.init(jax.random.PRNGKey(0), x, train=False)

  def loss(p):
    out, _ = net.apply({'params': p, 'batch_stats': v['batch_stats']}, x, train=True, mask=mask,
                       mutable=['batch_stats'])
    return jnp.mean(jnp.square(out.astype(jnp.float32))), out

  with compare.conv_impl_env(impl):
    (_, out), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(v['params'])
  return out, g


@needs_onednn
@pytest.mark.parametrize('name,dtype,padded', [('FCDD_CNN28_W', 'float32', False), ('FCDD_CNN32_LW3K', 'float32', True),
                                               ('FCDD_CNN32_LW3K', 'bfloat16', False)])
def test_whole_net_gradients_equal_xla_path(name, dtype, padded):
  """A whole net's output and parameter gradients (fused blocks, final 1x1 conv; a padded batch with a mask)
  are the same on both conv paths, within the dtype's rounding."""
  skip_unless_onednn_has(dtype)
  mask = jnp.asarray([1.0, 1.0, 0.0]) if padded else None
  n = 3 if padded else 2
  out_x, g_x = _net_grads(name, 'xla', dtype, n, mask)
  out_o, g_o = _net_grads(name, 'onednn', dtype, n, mask)
  tol = 1e-3 if dtype == 'float32' else 5e-2
  _close(np.asarray(out_o, np.float64), np.asarray(out_x, np.float64), tol, 'output')
  for (path, gx), go in zip(jax.tree_util.tree_leaves_with_path(g_x), jax.tree_util.tree_leaves(g_o)):
    gx, go = np.asarray(gx, np.float64), np.asarray(go, np.float64)
    if np.abs(gx).max() < 1e-6:   # the conv biases before a batch-statistics BN: exactly 0 on both paths
      assert np.abs(go).max() < 1e-6, jax.tree_util.keystr(path)
      continue
    rel = np.sqrt(np.mean((go - gx) ** 2) / np.mean(gx ** 2))
    assert rel < tol, (jax.tree_util.keystr(path), rel)


def _run_python(code, impl):
  env = dict(os.environ, JAX_PLATFORMS='cpu', FCDD_CONV_IMPL=impl)
  env.pop('XLA_FLAGS', None)   # one CPU device (auto uses oneDNN with one device only)
  return subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


_FALLBACK = '''
import jax, jax.numpy as jnp
from fcdd_jax.models.cpu import onednn
from fcdd_jax.models import nets as models
if {hide}:
  onednn._extension_path = lambda: None   # as where the extension was not built
net = models.create('FCDD_CNN28_W')
x = jnp.ones((2, 28, 28, 1))
v = net.init(jax.random.PRNGKey(0), x, train=False)
y = net.apply(v, x, train=False)
net.apply(v, x + 1, train=False)   # a second trace: the path is said once
print('OK', y.shape, onednn.conv_impl())
'''


@pytest.mark.parametrize('impl,hide,want', [('xla', False, 'xla'), ('auto', True, 'xla'), ('onednn', True, None)])
def test_fallback_to_xla_says_once_which_path(impl, hide, want):
  """FCDD_CONV_IMPL=xla, or auto without the extension: the XLA convolutions run and the process says once
  which path it uses; FCDD_CONV_IMPL=onednn without the extension is an error that says why."""
  r = _run_python(_FALLBACK.format(hide=hide), impl)
  if want is None:
    assert r.returncode != 0 and 'oneDNN extension is unavailable' in r.stderr, r.stderr[-2000:]
    return
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.strip().endswith(f'OK (2, 7, 7, 1) {want}')
  lines = [l for l in r.stderr.splitlines() if 'fcdd_jax: convolutions:' in l]
  assert len(lines) == 1 and lines[0].startswith(f'fcdd_jax: convolutions: {want}'), r.stderr[-2000:]


@needs_onednn
def test_auto_uses_onednn_and_says_so_once():
  r = _run_python(_FALLBACK.format(hide=False), 'auto')
  assert r.returncode == 0, r.stderr[-2000:]
  lines = [l for l in r.stderr.splitlines() if 'fcdd_jax: convolutions:' in l]
  assert len(lines) == 1 and lines[0].startswith('fcdd_jax: convolutions: onednn (oneDNN 3.'), r.stderr[-2000:]
  assert r.stdout.strip().endswith('onednn')


_NO_BF16 = '''
import jax, jax.numpy as jnp, numpy as np
from fcdd_jax.models.cpu import onednn
from fcdd_jax.models import nets as models
if {simulate}:
  onednn.supports = lambda name: name == 'float32'   # as oneDNN on a CPU without AVX-512
net = models.create('FCDD_CNN32_LW3K', dtype=jnp.bfloat16)
x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
v = net.init(jax.random.PRNGKey(0), x, train=False)
def loss(p):
  out, _ = net.apply({{'params': p, 'batch_stats': v['batch_stats']}}, x, train=True, mutable=['batch_stats'])
  return jnp.mean(jnp.square(out.astype(jnp.float32)))
step = jax.jit(jax.value_and_grad(loss))
hlo = step.lower(v['params']).as_text()
val, g = step(v['params'])
print('OK', bool(np.isfinite(float(val))), 'fcdd_onednn_conv' in hlo, 'fcdd_block_tail' in hlo)
'''


@needs_onednn
def test_bfloat16_without_onednn_support_runs_on_xla():
  """Where oneDNN has no bfloat16 convolutions (CPUs without AVX-512: creating one fails, and a bf16 net crashed
  at its first step), a bfloat16 net's convolutions and block tails run on XLA under FCDD_CONV_IMPL=auto and
  train; the process says why once. On such a CPU the real probe is what decides; elsewhere it is
  simulated. FCDD_CONV_IMPL=onednn is then a one-line error naming the dtype and what to do."""
  simulate = onednn.supports('bfloat16')
  r = _run_python(_NO_BF16.format(simulate=simulate), 'auto')
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.strip().endswith('OK True False False'), r.stdout[-500:]
  lines = [l for l in r.stderr.splitlines() if 'fcdd_jax: convolutions:' in l]
  assert len(lines) == 1 and 'bfloat16 convolutions on XLA' in lines[0], r.stderr[-2000:]
  r = _run_python(_NO_BF16.format(simulate=simulate), 'onednn')
  assert r.returncode != 0
  assert 'FCDD_CONV_IMPL=onednn but oneDNN has no bfloat16 convolutions on this CPU' in r.stderr, r.stderr[-2000:]


@needs_onednn
def test_onednn_has_float32_everywhere_and_bfloat16_with_avx512():
  """oneDNN's answer (the extension's probe) against the CPU's flags: float32 convolutions on every x86-64 CPU,
  bfloat16 ones exactly where the CPU has AVX-512 (oneDNN 3.2 emulates bf16 products on AVX-512 without
  AVX512-BF16 and has no bf16 convolutions on AVX2)."""
  assert onednn.supports('float32')
  assert onednn.supports('bfloat16') == ('avx512bw' in onednn.cpu_flags())
  assert not onednn.supports('float16')


def test_unknown_choice_is_an_error(monkeypatch):
  monkeypatch.setenv(onednn.ENV, 'mkl')
  with pytest.raises(ValueError, match='FCDD_CONV_IMPL'):
    onednn.conv_impl()

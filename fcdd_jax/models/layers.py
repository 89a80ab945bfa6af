"""The building blocks of the nets, in flax.linen, NHWC, PyTorch semantics (spec §1.1, §11.10).

`Conv` (PyTorch padding and init; on XLA:CPU in bfloat16 the bf16 GEMM convolution `cpu_conv.gemm_conv`,
elsewhere `conv_s1`'s GEMM weight gradient or XLA's conv), `Dense`, `BatchNorm` (PyTorch running statistics,
masked batch statistics for padded batches), `masked_batch_norm` (its custom-VJP training kernel; the fused
blocks of `feature_stack` mask their statistics themselves, `fused_block.conv_block`), `max_pool` (non-overlapping
pools with PyTorch's first-maximum gradient, `pool_first_max`) and `upsample2`. The nets themselves are in
`models` and `baselines`.
"""
import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fcdd_jax.models.cpu import cpu_conv
from fcdd_jax.models.cpu import onednn

LEAKY = 0.01  # slope of every leaky ReLU of the nets (spec §1.3)


def torch_uniform(fan_in):
  """PyTorch's default init of conv/linear weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _xavier_uniform(gain, fan_in, fan_out):
  bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _lax_conv(x, w, stride, pad, preferred_element_type=None):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      preferred_element_type=preferred_element_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_s1(x, w, pad):
  """Stride-1 NHWC convolution whose weight gradient is k*k matmuls (GEMMs) instead of XLA:CPU's
  backward-filter convolution, ~1.5x faster on CPU (bench/README.md); same values up to float rounding."""
  return _lax_conv(x, w, 1, pad)


def _conv_s1_fwd(x, w, pad):
  return _lax_conv(x, w, 1, pad), (x, w)


def _conv_s1_bwd(pad, res, dy):
  x, w = res
  k = w.shape[0]
  _, vjp_x = jax.vjp(lambda xx: _lax_conv(xx, w, 1, pad), x)
  (dx,) = vjp_x(dy)
  ci, co = w.shape[2], w.shape[3]
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  oh, ow = dy.shape[1], dy.shape[2]
  dyf = dy.reshape(-1, co)
  taps = [jnp.dot(xp[:, i:i + oh, j:j + ow, :].reshape(-1, ci).T, dyf, preferred_element_type=jnp.float32)
          for i in range(k) for j in range(k)]
  dw = jnp.stack(taps).reshape(k, k, ci, co).astype(w.dtype)
  return dx, dw


conv_s1.defvjp(_conv_s1_fwd, _conv_s1_bwd)


def use_gemm_conv(dtype, stride, cin, backend=None, x=None):
  """Whether a conv in compute dtype `dtype` runs as bf16 GEMMs (`cpu_conv.gemm_conv`): only for bfloat16
  compute on XLA:CPU (where the bf16 GEMM is ~2x faster than the float32 one but convolutions get no bf16
  speed-up) and stride 1 — every such layer, the cin=1/3 first layers too (faster as GEMMs in the train step,
  bench/README.md). On GPU/TPU plain XLA convs are used; so are they for an input `x` of symbolic height or
  width (an export of whole images of any size: the im2col's row count is not provably non-negative)."""
  if jnp.dtype(dtype) != jnp.dtype(jnp.bfloat16):
    return False
  if x is not None and not cpu_conv.is_static(x.shape[1:3]):   # a symbolic batch is fine: rows of one GEMM
    return False
  if stride != 1:
    return False
  return (backend or jax.default_backend()) == 'cpu'


def use_onednn_conv(dtype, stride, x):
  """Whether a conv of x (compute dtype `dtype`) runs on oneDNN (`fcdd_jax.models.cpu.onednn`: XLA:CPU, stride 1, float32
  or bfloat16, FCDD_CONV_IMPL). Shapes must be concrete: exported programs (symbolic shapes, `export`) keep XLA's
  portable convolutions."""
  return cpu_conv.is_static(x.shape) and onednn.use_onednn(dtype, stride)


class Conv(nn.Module):
  """2-D convolution with PyTorch padding semantics and (optionally) PyTorch default init."""
  features: int
  kernel: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = True
  torch_init: bool = True
  xavier_gain: Optional[float] = None
  dtype: Any = jnp.float32
  out_dtype: Any = None  # dtype of the output (default: dtype); float32 keeps a bf16 net's scores unrounded

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    out_dtype = self.dtype if self.out_dtype is None else self.out_dtype
    fan_in = cin * self.kernel * self.kernel
    if self.xavier_gain is not None:
      k_init = _xavier_uniform(self.xavier_gain, fan_in, self.features * self.kernel * self.kernel)
    elif self.torch_init:
      k_init = torch_uniform(fan_in)
    else:
      k_init = nn.initializers.lecun_normal()
    b_init = torch_uniform(fan_in) if self.torch_init else nn.initializers.zeros
    kernel = self.param('kernel', k_init, (self.kernel, self.kernel, cin, self.features))
    if use_onednn_conv(self.dtype, self.stride, x):  # float32 output, bias added in float32 below
      y = onednn.conv(x, kernel, self.padding, self.dtype)
    elif use_gemm_conv(self.dtype, self.stride, cin, x=x):
      # float32 output (float32 accumulation); the bias is added in float32 before rounding to bf16, so
      # its gradient is a float32 sum too.
      y = cpu_conv.gemm_conv(x.astype(self.dtype), kernel, self.padding, self.dtype)
    elif self.stride == 1 and self.kernel == 3 and cin >= 32:  # where the GEMM weight gradient wins (bench)
      y = conv_s1(x.astype(self.dtype), kernel.astype(self.dtype), self.padding)
    elif jnp.dtype(self.dtype).itemsize < 4:  # mixed precision: float32 accumulation, bias added in float32
      y = _lax_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding,
                    preferred_element_type=jnp.float32)
    else:
      y = _lax_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding)
    if self.use_bias:
      y = y + self.param('bias', b_init, (self.features,)).astype(y.dtype)
    return y.astype(out_dtype)


class Dense(nn.Module):
  features: int
  use_bias: bool = True
  torch_init: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    k_init = torch_uniform(fan_in) if self.torch_init else nn.initializers.lecun_normal()
    b_init = torch_uniform(fan_in) if self.torch_init else nn.initializers.zeros
    kernel = self.param('kernel', k_init, (fan_in, self.features))
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param('bias', b_init, (self.features,)).astype(self.dtype)
    return y


BN_MOMENTUM = 0.1   # PyTorch's BatchNorm momentum (flax momentum = 1 - this), for every BatchNorm here


class BatchNorm(nn.Module):
  """PyTorch-semantics BatchNorm over all axes but the last.

  Training normalises with the biased batch variance; the running variance is updated with the unbiased
  one when `unbiased_var` (PyTorch, spec §11.10). `use_running=True` always normalises with running
  statistics and never updates them (fully frozen BN, spec §11.1 option).
  `mask` [N] (1 = real example, 0 = padding row of a partial last batch): the batch statistics and the
  running-average update use the real rows only, as if the padding rows were not in the batch.
  """
  eps: float = 1e-4
  momentum: float = BN_MOMENTUM   # PyTorch convention (flax momentum = 1 - this)
  affine: bool = True
  unbiased_var: bool = True
  use_running: bool = False

  @nn.compact
  def __call__(self, x, train, mask=None):
    c = x.shape[-1]
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    x32 = x.astype(jnp.float32)
    if train and not self.use_running:
      axes = tuple(range(x.ndim - 1))
      if mask is not None:   # padded batch: statistics of the real rows (custom VJP, see masked_batch_norm)
        scale = self.param('scale', nn.initializers.ones, (c,)) if self.affine else jnp.zeros((0,), jnp.float32)
        bias = self.param('bias', nn.initializers.zeros, (c,)) if self.affine else jnp.zeros((0,), jnp.float32)
        y, mean, var = masked_batch_norm(x, mask, scale, bias, self.eps)
        if not self.is_initializing():
          n = mask_count(x, mask)
          upd_var = var * (n / jnp.maximum(n - 1, 1)) if self.unbiased_var else var
          ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean
          ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * upd_var
        return y
      n = int(np.prod([x.shape[a] for a in axes]))
      mean = jnp.mean(x32, axes)
      var = jnp.mean(jnp.square(x32 - mean), axes)
      if not self.is_initializing():
        upd_var = var * (n / max(n - 1, 1)) if self.unbiased_var else var
        ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean
        ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * upd_var
    else:
      mean, var = ra_mean.value, ra_var.value
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    if self.affine:
      y = y * self.param('scale', nn.initializers.ones, (c,)) + self.param('bias', nn.initializers.zeros, (c,))
    return y.astype(x.dtype)


def mask_count(x, mask):
  """Number of real positions a masked BatchNorm averages over: real rows x the spatial positions."""
  return jnp.sum(jnp.asarray(mask, jnp.float32)) * int(np.prod(x.shape[1:-1]))


def _masked_bn_forward(z, mask, scale, bias, eps):
  axes = tuple(range(z.ndim - 1))
  zf = z.astype(jnp.float32)
  m = jnp.asarray(mask, jnp.float32).reshape((-1,) + (1,) * (z.ndim - 1))
  n = mask_count(z, mask)
  mean = jnp.sum(zf * m, axes) / n
  var = jnp.sum(jnp.square(zf - mean) * m, axes) / n
  xhat = (zf - mean) * jax.lax.rsqrt(var + eps)
  y = (xhat * scale + bias if scale.shape[0] else xhat).astype(z.dtype)
  return y, mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def masked_batch_norm(z, mask, scale, bias, eps):
  """Training BatchNorm whose batch statistics count only the rows with mask 1 (the padding rows of a partial
  last batch are normalised with them but do not shape them).

  z [N,...,C] (compute dtype), mask [N], scale/bias [C] or shape (0,) for none. Returns (y in z's dtype, batch
  mean, biased batch variance) (float32; the statistics are for the running averages, their cotangents are
  ignored). The VJP keeps only z and the statistics and recomputes the rest. Gradient:
  dz = gamma*inv*(g - m*sum(g)/n - m*xhat*sum(g*xhat)/n), sums over all rows."""
  return _masked_bn_forward(z, mask, scale, bias, eps)


def _masked_bn_fwd(z, mask, scale, bias, eps):
  y, mean, var = _masked_bn_forward(z, mask, scale, bias, eps)
  return (y, mean, var), (z, mask, scale, bias, mean, var)


def _masked_bn_bwd(eps, res, cts):
  z, mask, scale, bias, mean, var = res
  axes = tuple(range(z.ndim - 1))
  zf = z.astype(jnp.float32)
  m = jnp.asarray(mask, jnp.float32).reshape((-1,) + (1,) * (z.ndim - 1))
  n = mask_count(z, mask)
  inv = jax.lax.rsqrt(var + eps)
  xhat = (zf - mean) * inv
  g = cts[0].astype(jnp.float32)
  dbeta = jnp.sum(g, axes)
  dgamma = jnp.sum(g * xhat, axes)
  gamma = scale if scale.shape[0] else jnp.ones_like(mean)
  dz = (gamma * inv) * (g - m * (dbeta / n) - m * xhat * (dgamma / n))
  affine = scale.shape[0] > 0
  return (dz.astype(z.dtype), jnp.zeros_like(mask),
          dgamma.astype(scale.dtype) if affine else jnp.zeros_like(scale),
          dbeta.astype(bias.dtype) if affine else jnp.zeros_like(bias))


masked_batch_norm.defvjp(_masked_bn_fwd, _masked_bn_bwd)


def _window_max_and_index(x, k):
  """Max of each non-overlapping k x k window of x [N,H,W,C] and the row-major position (0..k*k-1; int8 up to
  127 positions) of its first maximum, from one variadic reduction: the position points at the maximum of the
  very values the max was taken over, so it cannot miss even where XLA recomputes x's producer elsewhere with
  other rounding."""
  n, h, w, c = x.shape
  xw = x.reshape(n, h // k, k, w // k, k, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // k, w // k, k * k, c)
  idx_dtype = jnp.int8 if k * k <= 127 else jnp.int32
  pos = jax.lax.broadcasted_iota(idx_dtype, xw.shape, 3)

  def pick(a, b):   # the larger value; on a tie (or both NaN) the lower position; NaN wins like jnp.max
    (av, ai), (bv, bi) = a, b
    a_nan, b_nan = jnp.isnan(av), jnp.isnan(bv)
    take_a = (av > bv) | (a_nan & ~b_nan) | (((av == bv) | (a_nan & b_nan)) & (ai < bi))
    return jnp.where(take_a, av, bv), jnp.where(take_a, ai, bi)

  init = (jnp.array(-jnp.inf, x.dtype), jnp.array(jnp.iinfo(idx_dtype).max, idx_dtype))
  return jax.lax.reduce((xw, pos), init, pick, (3,))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def pool_first_max(x, k):
  """Non-overlapping k x k max pool of x [N,H,W,C] whose gradient goes to the first maximum of each window
  (row-major, PyTorch's choice). The backward pass routes by the position the forward pass found
  (`_window_max_and_index`), never by comparing values again. The mask `x == max` of jnp.max's gradient missed
  under jit: XLA:CPU took the max in a YNNPACK fusion of the stored activation, and recomputed conv bias ->
  BatchNorm -> activation from the conv output for the mask in a loop fusion, with other rounding; the
  float32 nets without fused blocks lost most first-block gradients (FCDD_CNN28_W bn0.bias: 0.059 against
  0.080 by finite differences). Keeps only the positions (int8, one per window) for the backward pass, not x. Not
  differentiated (evaluation, serving), it is a plain max."""
  n, h, w, c = x.shape
  return jnp.max(x.reshape(n, h // k, k, w // k, k, c), axis=(2, 4))


def _pool_first_max_fwd(x, k):
  y, idx = _window_max_and_index(x, k)
  return y, idx


def _pool_first_max_bwd(k, idx, g):
  n, hk, wk, c = g.shape
  pos = (jnp.arange(k, dtype=idx.dtype)[:, None] * k + jnp.arange(k, dtype=idx.dtype)[None, :]).reshape(
      1, 1, k, 1, k, 1)
  dx = jnp.where(pos == idx[:, :, None, :, None, :], g[:, :, None, :, None, :], jnp.zeros((), g.dtype))
  return (dx.reshape(n, hk * k, wk * k, c),)


pool_first_max.defvjp(_pool_first_max_fwd, _pool_first_max_bwd)


def max_pool(x, k, stride, pad):
  if k == stride and not pad and x.shape[1] % k == 0 and x.shape[2] % k == 0:
    return pool_first_max(x, k)
  if pad:
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-jnp.inf)
  return nn.max_pool(x, (k, k), (stride, stride), 'VALID')


def upsample2(x):
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)

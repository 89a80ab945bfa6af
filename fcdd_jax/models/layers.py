"""The building blocks of the nets, in flax.linen, NHWC, PyTorch semantics (spec §1.1, §11.10).

`Conv` (PyTorch padding and init; on XLA:CPU in bfloat16 the bf16 GEMM convolution `cpu_conv.gemm_conv`,
elsewhere `conv_s1`'s GEMM weight gradient or XLA's conv), `Dense`, `BatchNorm` (PyTorch running statistics,
masked batch statistics for padded batches), `masked_batch_norm` (its custom-VJP training kernel; the fused
blocks of `feature_stack` mask their statistics themselves, `fused_block.conv_block`), `max_pool` (non-overlapping pools as reshape + max; bf16 with
PyTorch's first-maximum gradient) and `upsample2`. The nets themselves are in `models` and `baselines`.
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
        y, mean, var = masked_batch_norm(x, mask, scale, bias, self.eps, None, LEAKY, 0)
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


def _masked_bn_forward(z, mask, scale, bias, eps, act, slope, pool):
  axes = tuple(range(z.ndim - 1))
  zf = z.astype(jnp.float32)
  m = jnp.asarray(mask, jnp.float32).reshape((-1,) + (1,) * (z.ndim - 1))
  n = mask_count(z, mask)
  mean = jnp.sum(zf * m, axes) / n
  var = jnp.sum(jnp.square(zf - mean) * m, axes) / n
  inv = jax.lax.rsqrt(var + eps)
  xhat = (zf - mean) * inv
  a = (xhat * scale + bias if scale.shape[0] else xhat).astype(z.dtype)
  if act == 'relu':
    y = jnp.maximum(a, jnp.zeros((), a.dtype))
  elif act == 'leaky':
    y = jnp.where(a > 0, a, a * jnp.asarray(slope, a.dtype))
  else:
    y = a
  if pool:
    n_, h, w, c = y.shape
    y = jnp.max(y.reshape(n_, h // pool, pool, w // pool, pool, c), axis=(2, 4))
  return y, mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def masked_batch_norm(z, mask, scale, bias, eps, act=None, slope=LEAKY, pool=0):
  """Training BatchNorm (+ activation 'relu' | 'leaky' | None, + non-overlapping pool x pool max pool) whose
  batch statistics count only the rows with mask 1 (the padding rows of a partial last batch are normalised
  with them but do not shape them).

  z [N,...,C] (compute dtype; [N,H,W,C] with pool), mask [N], scale/bias [C] or shape (0,) for none. Returns
  (y in z's dtype, batch mean, biased batch variance) (float32; the statistics are for the running averages,
  their cotangents are ignored). The VJP keeps only z and the statistics and recomputes the rest, like the
  fused blocks (`fused_block.conv_block`), with their conventions: an activation at exactly 0 takes the negative
  side's slope, the pool's gradient goes to the first maximum of its window (row-major). Gradient:
  dz = gamma*inv*(g - m*sum(g)/n - m*xhat*sum(g*xhat)/n), sums over all rows."""
  return _masked_bn_forward(z, mask, scale, bias, eps, act, slope, pool)


def _masked_bn_fwd(z, mask, scale, bias, eps, act, slope, pool):
  y, mean, var = _masked_bn_forward(z, mask, scale, bias, eps, act, slope, pool)
  return (y, mean, var), (z, mask, scale, bias, mean, var)


def _masked_bn_bwd(eps, act, slope, pool, res, cts):
  z, mask, scale, bias, mean, var = res
  axes = tuple(range(z.ndim - 1))
  zf = z.astype(jnp.float32)
  m = jnp.asarray(mask, jnp.float32).reshape((-1,) + (1,) * (z.ndim - 1))
  n = mask_count(z, mask)
  inv = jax.lax.rsqrt(var + eps)
  xhat = (zf - mean) * inv
  a = (xhat * scale + bias if scale.shape[0] else xhat).astype(z.dtype)
  g = cts[0].astype(jnp.float32)
  if pool:   # route each window's cotangent to its first maximum (row-major)
    r = a
    if act == 'relu':
      r = jnp.maximum(a, jnp.zeros((), a.dtype))
    elif act == 'leaky':
      r = jnp.where(a > 0, a, a * jnp.asarray(slope, a.dtype))
    n_, h, w, c = z.shape
    rw = r.reshape(n_, h // pool, pool, w // pool, pool, c)
    pmax = jnp.max(rw, axis=(2, 4), keepdims=True)
    pos = (jnp.arange(pool)[:, None] * pool + jnp.arange(pool)[None, :]).reshape(1, 1, pool, 1, pool, 1)
    first = jnp.min(jnp.where(rw == pmax, pos, pool * pool), axis=(2, 4), keepdims=True)
    g = jnp.where(pos == first, g[:, :, None, :, None, :], 0.0).reshape(z.shape)
  if act == 'relu':
    g = jnp.where(a > 0, g, 0.0)
  elif act == 'leaky':
    g = jnp.where(a > 0, g, g * slope)
  dbeta = jnp.sum(g, axes)
  dgamma = jnp.sum(g * xhat, axes)
  gamma = scale if scale.shape[0] else jnp.ones_like(mean)
  dz = (gamma * inv) * (g - m * (dbeta / n) - m * xhat * (dgamma / n))
  affine = scale.shape[0] > 0
  return (dz.astype(z.dtype), jnp.zeros_like(mask),
          dgamma.astype(scale.dtype) if affine else jnp.zeros_like(scale),
          dbeta.astype(bias.dtype) if affine else jnp.zeros_like(bias))


masked_batch_norm.defvjp(_masked_bn_fwd, _masked_bn_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _pool_first_max(x, k):
  """Non-overlapping k x k max pool whose gradient goes to the first maximum of each window (row-major,
  PyTorch's choice), written as one elementwise pass. jnp.max's own gradient splits it among tied maxima:
  a count reduction and a division over the window (XLA:CPU: a separate `divide_convert_fusion`, 18 ms per
  FCDD_CNN28_W bf16 step). Used for bfloat16 only (float32 keeps jnp.max's gradient and numerics); the bf16
  train step gets ~5 % faster on FCDD_CNN28_W, ~3 % on FCDD_CNN32_LW3K (bench/README.md)."""
  n, h, w, c = x.shape
  return jnp.max(x.reshape(n, h // k, k, w // k, k, c), axis=(2, 4))


def _pool_first_max_fwd(x, k):
  y = _pool_first_max(x, k)
  return y, (x, y)


def _pool_first_max_bwd(k, res, g):
  x, y = res
  n, h, w, c = x.shape
  xr = x.reshape(n, h // k, k, w // k, k, c)
  taken = None
  rows = []
  for i in range(k):
    cols = []
    for j in range(k):
      eq = xr[:, :, i, :, j, :] == y
      m = eq if taken is None else eq & ~taken
      taken = eq if taken is None else taken | eq
      cols.append(jnp.where(m, g, jnp.zeros_like(g)))
    rows.append(jnp.stack(cols, axis=3))        # [n, h/k, w/k, k(j), c]
  dx = jnp.stack(rows, axis=2)                  # [n, h/k, k(i), w/k, k(j), c]
  return (dx.reshape(n, h, w, c),)


_pool_first_max.defvjp(_pool_first_max_fwd, _pool_first_max_bwd)


def max_pool(x, k, stride, pad):
  if k == stride and not pad and x.shape[1] % k == 0 and x.shape[2] % k == 0:
    if x.dtype == jnp.bfloat16:
      return _pool_first_max(x, k)
    # Non-overlapping pooling as reshape + max: its gradient is an elementwise mask, much faster on CPU
    # than XLA's select-and-scatter (bench/README.md).
    n, h, w, c = x.shape
    return jnp.max(x.reshape(n, h // k, k, w // k, k, c), axis=(2, 4))
  if pad:
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-jnp.inf)
  return nn.max_pool(x, (k, k), (stride, stride), 'VALID')


def upsample2(x):
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)

"""FCDD networks (spec §1.3), HSC baselines (§1.4) and AE baselines (§1.5) in flax.linen, NHWC.

`create(name, **options)` builds a net; FCDD nets return the raw map phi [N,h',w',1] (before pseudo-Huber),
HSC nets a feature vector [N,d], AE nets a reconstruction [N,H,W,C]. Variables: {'params', 'batch_stats'}.
Every FCDD net class carries `.reception` (spec §1.2), computed from its class-level layer list.

Layers are described by small tuples so that architecture, receptive field and parameter naming come from
one place:
  ('conv', cout, k, stride, pad, bn, act)   conv (+ BatchNorm) (+ activation)
  ('pool', k, stride, pad)                   max pool (padding with -inf)
VGG layers are named after torchvision's `features.<idx>` (features_<idx>) so pretrained weights map 1:1.
"""
import functools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fcdd_jax import cpu_conv
from fcdd_jax import receptive

LEAKY = 0.01


# ----------------------------------------------------------------------------------------------------
# Building blocks

def _torch_uniform(fan_in):
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


def use_gemm_conv(dtype, stride, cin, backend=None):
  """Whether a conv in compute dtype `dtype` runs as bf16 GEMMs (`cpu_conv.gemm_conv`): only for bfloat16
  compute on XLA:CPU (where the bf16 GEMM is ~2x faster than the float32 one but convolutions get no bf16
  speed-up) and stride 1 — every such layer, the cin=1/3 first layers too (faster as GEMMs in the train step,
  bench/README.md). On GPU/TPU plain XLA convs are used."""
  if jnp.dtype(dtype) != jnp.dtype(jnp.bfloat16):
    return False
  if stride != 1:
    return False
  return (backend or jax.default_backend()) == 'cpu'


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
      k_init = _torch_uniform(fan_in)
    else:
      k_init = nn.initializers.lecun_normal()
    b_init = _torch_uniform(fan_in) if self.torch_init else nn.initializers.zeros
    kernel = self.param('kernel', k_init, (self.kernel, self.kernel, cin, self.features))
    if use_gemm_conv(self.dtype, self.stride, cin):
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
    k_init = _torch_uniform(fan_in) if self.torch_init else nn.initializers.lecun_normal()
    b_init = _torch_uniform(fan_in) if self.torch_init else nn.initializers.zeros
    kernel = self.param('kernel', k_init, (fan_in, self.features))
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param('bias', b_init, (self.features,)).astype(self.dtype)
    return y


class BatchNorm(nn.Module):
  """PyTorch-semantics BatchNorm over all axes but the last.

  Training normalises with the biased batch variance; the running variance is updated with the unbiased
  one when `unbiased_var` (PyTorch, spec §11.10). `use_running=True` always normalises with running
  statistics and never updates them (fully frozen BN, spec §11.1 option).
  `mask` [N] (1 = real example, 0 = padding row of a partial last batch): the batch statistics and the
  running-average update use the real rows only, as if the padding rows were not in the batch.
  """
  eps: float = 1e-4
  momentum: float = 0.1           # PyTorch convention (flax momentum = 1 - this)
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
          n = _mask_count(x, mask)
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


def _mask_count(x, mask):
  """Number of real positions a masked BatchNorm averages over: real rows x the spatial positions."""
  return jnp.sum(jnp.asarray(mask, jnp.float32)) * int(np.prod(x.shape[1:-1]))


def _masked_bn_forward(z, mask, scale, bias, eps, act, slope, pool):
  axes = tuple(range(z.ndim - 1))
  zf = z.astype(jnp.float32)
  m = jnp.asarray(mask, jnp.float32).reshape((-1,) + (1,) * (z.ndim - 1))
  n = _mask_count(z, mask)
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
  fused blocks (`cpu_conv.conv_block`), with their conventions: an activation at exactly 0 takes the negative
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
  n = _mask_count(z, mask)
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


# ----------------------------------------------------------------------------------------------------
# Architectures

# VGG11-BN features (torchvision configuration "A"), with torchvision module indices.
VGG11_FEATURES = (
    ('conv', 64, 3, 1, 1, True, True, 0), ('pool', 2, 2, 0, 3),
    ('conv', 128, 3, 1, 1, True, True, 4), ('pool', 2, 2, 0, 7),
    ('conv', 256, 3, 1, 1, True, True, 8), ('conv', 256, 3, 1, 1, True, True, 11), ('pool', 2, 2, 0, 14),
    ('conv', 512, 3, 1, 1, True, True, 15), ('conv', 512, 3, 1, 1, True, True, 18), ('pool', 2, 2, 0, 21),
    ('conv', 512, 3, 1, 1, True, True, 22), ('conv', 512, 3, 1, 1, True, True, 25), ('pool', 2, 2, 0, 28),
)
VGG_FROZEN_INDICES = (0, 1, 4, 5, 8, 9, 11, 12)  # convs 1-4 and their BNs (torchvision features[0:15])


def _conv(cout, k, p, bn=True, act=True, s=1):
  return ('conv', cout, k, s, p, bn, act)


def _pool(k=2, s=2, p=0):
  return ('pool', k, s, p)


FCDD_ARCHS = {
    'FCDD_CNN28': ((28, 28, 1), (_conv(8, 5, 2), _pool(), _conv(16, 5, 2, bn=False, act=False), _pool())),
    'FCDD_CNN28_W': ((28, 28, 1), (_conv(128, 5, 2), _pool(), _conv(128, 5, 2, bn=False, act=False), _pool())),
    'FCDD_CNN32': ((32, 32, 3), (_conv(32, 5, 2), _pool(), _conv(64, 5, 2), _pool(),
                                 _conv(128, 5, 2, bn=False, act=False))),
    'FCDD_CNN32_S': ((32, 32, 3), (_conv(32, 3, 1), _pool(), _conv(64, 3, 1), _pool(),
                                   _conv(128, 3, 1, bn=False, act=False))),
    'FCDD_CNN32_LW3K': ((32, 32, 3), (_conv(128, 3, 1), _pool(), _conv(256, 3, 1), _conv(256, 3, 1), _pool(),
                                      _conv(128, 3, 1, bn=False, act=False))),
    'FCDD_CNN224': ((224, 224, 3), (_conv(8, 5, 2), _pool(3, 2, 1), _conv(32, 5, 2), _pool(3, 2, 1),
                                    _conv(64, 3, 1), _conv(128, 3, 1), _pool(3, 2, 1),
                                    _conv(128, 3, 1, bn=False, act=False))),
    'FCDD_CNN224_W': ((224, 224, 3), (_conv(32, 5, 2), _pool(3, 2, 1), _conv(128, 5, 2), _pool(3, 2, 1),
                                      _conv(256, 3, 1), _conv(256, 3, 1), _pool(3, 2, 1),
                                      _conv(128, 3, 1, bn=False, act=False))),
}
VGG_FCDD = ('FCDD_CNN224_VGG', 'FCDD_CNN224_VGG_F', 'FCDD_CNN224_VGG_NOPT')
for _n in VGG_FCDD:
  FCDD_ARCHS[_n] = ((224, 224, 3), VGG11_FEATURES[:9])  # up to the 6th conv (+BN+ReLU), torchvision 0..20


def _rf_layers(layers):
  out = []
  for l in layers:
    if l[0] == 'conv':
      out.append((l[2], l[3], l[4]))
    else:
      out.append((l[1], l[2], l[3]))
  return out + [(1, 1, 0)]  # the final 1x1 conv


class _ConvWeights(nn.Module):
  """The variables of a `Conv` (same names, shapes, init and creation order) without computing it: the fused
  blocks (`cpu_conv.conv_block`) take them as arrays."""
  features: int
  kernel: int
  use_bias: bool = True
  torch_init: bool = True

  @nn.compact
  def __call__(self, cin):
    fan_in = cin * self.kernel * self.kernel
    k_init = _torch_uniform(fan_in) if self.torch_init else nn.initializers.lecun_normal()
    b_init = _torch_uniform(fan_in) if self.torch_init else nn.initializers.zeros
    kernel = self.param('kernel', k_init, (self.kernel, self.kernel, cin, self.features))
    bias = self.param('bias', b_init, (self.features,)) if self.use_bias else jnp.zeros((0,), jnp.float32)
    return kernel, bias


class _BatchNormVariables(nn.Module):
  """The variables of a `BatchNorm` (same names); `__call__(stats_fn)` runs stats_fn(scale, bias, mean, var)
  -> (y, batch_mean, batch_var) and updates the running statistics like `BatchNorm` does."""
  features: int
  momentum: float = 0.1
  affine: bool = True
  unbiased_var: bool = True
  update: bool = True  # training with batch statistics

  @nn.compact
  def __call__(self, count, stats_fn):
    c = self.features
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    if self.affine:
      scale = self.param('scale', nn.initializers.ones, (c,))
      bias = self.param('bias', nn.initializers.zeros, (c,))
    else:
      scale = bias = jnp.zeros((0,), jnp.float32)
    y, mean, var = stats_fn(scale, bias, ra_mean.value, ra_var.value)
    if self.update and not self.is_initializing():
      upd_var = var * (count / jnp.maximum(count - 1, 1)) if self.unbiased_var else var
      ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean
      ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * upd_var
    return y


def use_fused_blocks(option, backend=None):
  """Whether feature stacks run as fused conv-BN-activation-pool blocks (`cpu_conv.conv_block`, a custom VJP
  that keeps only each block's input and conv output for the backward pass). `option`: True, False or None
  (auto: on XLA:CPU, where it cuts the train step's temporary memory ~2-3x and its time; bench/README.md)."""
  if option is not None:
    return bool(option)
  return (backend or jax.default_backend()) == 'cpu'


class FeatureStack(nn.Module):
  """A stack of conv/pool layers from a layer list (hand-written style or VGG style)."""
  layers: Sequence[tuple]
  vgg: bool = False
  bias: bool = True
  torch_init: bool = True
  bn_unbiased_var: bool = True
  frozen_bn_indices: Sequence[int] = ()
  dtype: Any = jnp.float32
  fused: bool = False

  @nn.compact
  def __call__(self, x, train, mask=None):
    i = 0
    while i < len(self.layers):
      l = self.layers[i]
      if l[0] != 'conv':
        x = max_pool(x, l[1], l[2], l[3])
        i += 1
        continue
      _, cout, k, s, p, bn, act = l[:7]
      idx = l[7] if len(l) > 7 else None
      cname = f'features_{idx}' if idx is not None else f'conv{i}'
      bname = f'features_{idx + 1}' if idx is not None else f'bn{i}'
      eps = 1e-5 if self.vgg else 1e-4
      use_running = idx is not None and (idx + 1) in self.frozen_bn_indices
      if self.fused and s == 1:
        nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
        pool = 0
        if nxt is not None and nxt[0] == 'pool' and nxt[1] == nxt[2] and not nxt[3]:
          pool = nxt[1] if (x.shape[1] + 2 * p - k + 1) % nxt[1] == 0 and (x.shape[2] + 2 * p - k + 1) % nxt[1] == 0 \
              else 0
        x = self._fused(x, cout, k, p, bn, act, pool, eps, use_running, train, cname, bname, mask)
        i += 2 if pool else 1
        continue
      x = Conv(cout, k, s, p, use_bias=self.bias or self.vgg, torch_init=self.torch_init, dtype=self.dtype,
               name=cname)(x)
      if bn:
        x = BatchNorm(eps=eps, affine=self.bias or self.vgg, unbiased_var=self.bn_unbiased_var,
                      use_running=use_running, name=bname)(x, train, mask)
      if act:
        x = nn.relu(x) if self.vgg else nn.leaky_relu(x, LEAKY)
      i += 1
    return x

  def _fused(self, x, cout, k, p, bn, act, pool, eps, use_running, train, cname, bname, mask=None):
    dtype = jnp.dtype(self.dtype)
    w, b = _ConvWeights(cout, k, use_bias=self.bias or self.vgg, torch_init=self.torch_init, name=cname)(
        x.shape[-1])
    conv = 'gemm' if use_gemm_conv(dtype, 1, x.shape[-1]) else 'xla'
    mode = None if not bn else ('batch' if train and not use_running else 'running')
    spec = cpu_conv.BlockSpec(pad=p, bn=mode, eps=eps, act=(None if not act else 'relu' if self.vgg else 'leaky'),
                              slope=LEAKY, pool=pool, dtype=dtype.name, conv=conv)
    none = jnp.zeros((0,), jnp.float32)
    if not bn:
      return cpu_conv.conv_block(spec, x, w, b, none, none, none, none)[0]
    if mask is not None and mode == 'batch':
      # a padded batch: the fused block's statistics would count the padding rows, so the conv runs as a
      # block of its own, then BatchNorm + activation + pool with the real rows' statistics
      z = cpu_conv.conv_block(spec._replace(bn=None, act=None, pool=0), x, w, b, none, none, none, none)[0]
      return _BatchNormVariables(cout, affine=self.bias or self.vgg, unbiased_var=self.bn_unbiased_var,
                                 name=bname)(
          _mask_count(z, mask), lambda scale, bias, mean, var: masked_batch_norm(z, mask, scale, bias, eps,
                                                                                  spec.act, LEAKY, pool))
    n = x.shape[0] * (x.shape[1] + 2 * p - k + 1) * (x.shape[2] + 2 * p - k + 1)
    return _BatchNormVariables(cout, affine=self.bias or self.vgg, unbiased_var=self.bn_unbiased_var,
                               update=mode == 'batch', name=bname)(
        n, lambda scale, bias, mean, var: cpu_conv.conv_block(spec, x, w, b, scale, bias, mean, var))


def _check_input(name, x, shape):
  if tuple(x.shape[1:3]) != tuple(shape[:2]):
    raise ValueError(f'net {name} takes inputs [N,{shape[0]},{shape[1]},C]; got shape {tuple(x.shape)}')


class FCDDNet(nn.Module):
  """A fully convolutional FCDD net; subclasses set NAME (architecture from FCDD_ARCHS)."""
  NAME = None
  reception = None
  bias: bool = True
  torch_init: bool = True
  bn_unbiased_var: bool = True
  frozen_bn: str = 'parity'
  dtype: Any = jnp.float32
  remat: Optional[bool] = None
  any_size: bool = False      # accept inputs of any height and width (prediction); else the nominal size only

  @nn.compact
  def __call__(self, x, train=False, mask=None):
    shape, layers = FCDD_ARCHS[self.NAME]
    if not self.any_size:
      _check_input(self.NAME, x, shape)
    vgg = self.NAME in VGG_FCDD
    frozen_bn = VGG_FROZEN_INDICES if (self.NAME.endswith('_F') and self.frozen_bn == 'frozen') else ()
    x = FeatureStack(layers, vgg=vgg, bias=self.bias, torch_init=self.torch_init,
                     bn_unbiased_var=self.bn_unbiased_var, frozen_bn_indices=frozen_bn, dtype=self.dtype,
                     fused=use_fused_blocks(self.remat), name='features')(x, train, mask)
    x = Conv(1, 1, 1, 0, use_bias=self.bias or vgg, torch_init=self.torch_init, dtype=self.dtype,
             out_dtype=jnp.float32, name='final')(x)
    return x.astype(jnp.float32)


FCDD_NAMES = tuple(FCDD_ARCHS)
_FCDD_CLASSES = {}
for _n in FCDD_NAMES:
  _shape, _layers = FCDD_ARCHS[_n]
  _FCDD_CLASSES[_n] = type(_n, (FCDDNet,), {
      'NAME': _n, 'reception': receptive.receptive_field(_rf_layers(_layers), _shape[0])[0],
      '__module__': __name__})


# HSC baselines (spec §1.4): feature stacks with a fully connected head.
HSC_ARCHS = {
    'CNN28': ((28, 28, 1), (_conv(8, 5, 2), _pool(), _conv(4, 5, 2), _pool()), (48,), 'FCDD_CNN28'),
    'CNN28_W': ((28, 28, 1), (_conv(128, 5, 2), _pool(), _conv(64, 5, 2), _pool()), (48,), 'FCDD_CNN28_W'),
    'CNN32': ((32, 32, 3), (_conv(32, 5, 2), _pool(), _conv(64, 5, 2), _pool(), _conv(128, 5, 2), _pool()),
              ('bn', 512, 64), 'FCDD_CNN32_S'),
    'CNN32_LW3K': ((32, 32, 3), (_conv(128, 3, 1), _pool(), _conv(256, 3, 1), _conv(256, 3, 1), _pool(),
                                 _conv(128, 3, 1), _pool()), ('bn', 512, 64), 'FCDD_CNN32_LW3K'),
    'CNN224': ((224, 224, 3), (_conv(8, 5, 2), _pool(3, 2, 1), _conv(32, 5, 2), _pool(3, 2, 1), _conv(64, 3, 1),
                               _conv(128, 3, 1), _pool(3, 2, 1), _conv(128, 3, 1), _pool(3, 2, 1),
                               _conv(64, 3, 1), _pool(3, 2, 1)), ('bn', 1536, 784), 'FCDD_CNN224'),
}
for _n, _cp in (('CNN224_VGG', 'FCDD_CNN224_VGG'), ('CNN224_VGG_F', 'FCDD_CNN224_VGG'),
                ('CNN224_VGG_NOPT', 'FCDD_CNN224_VGG_NOPT'), ('CNN224_VGG_NOPT_1000', 'FCDD_CNN224_VGG_NOPT')):
  HSC_ARCHS[_n] = ((224, 224, 3), VGG11_FEATURES, ('vgg', 4096, 4096) + ((1000,) if _n.endswith('1000') else ()),
                   _cp)


class HSCNet(nn.Module):
  NAME = None
  fcdd_counterpart = None
  bias: bool = True
  torch_init: bool = True
  bn_unbiased_var: bool = True
  frozen_bn: str = 'parity'
  dtype: Any = jnp.float32
  remat: Optional[bool] = None

  @nn.compact
  def __call__(self, x, train=False, mask=None):
    shape, layers, head, _ = HSC_ARCHS[self.NAME]
    _check_input(self.NAME, x, shape)
    vgg = head[0] == 'vgg'
    frozen_bn = VGG_FROZEN_INDICES if (self.NAME.endswith('_F') and self.frozen_bn == 'frozen') else ()
    x = FeatureStack(layers, vgg=vgg, bias=self.bias, torch_init=self.torch_init,
                     bn_unbiased_var=self.bn_unbiased_var, frozen_bn_indices=frozen_bn, dtype=self.dtype,
                     fused=use_fused_blocks(self.remat), name='features')(x, train, mask)
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # flatten in PyTorch (C,H,W) order
    kw = dict(torch_init=self.torch_init, dtype=self.dtype)
    if vgg:  # classifier: Linear ReLU Dropout Linear [ReLU Dropout Linear]
      x = Dense(head[1], name='classifier_0', **kw)(x)
      x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
      x = Dense(head[2], name='classifier_3', **kw)(x)
      if len(head) > 3:
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
        x = Dense(head[3], name='classifier_6', **kw)(x)
    elif head[0] == 'bn':
      x = Dense(head[1], use_bias=self.bias, name='fc1', **kw)(x)
      x = BatchNorm(eps=1e-4, affine=self.bias, unbiased_var=self.bn_unbiased_var, name='bn1d')(x, train, mask)
      x = nn.leaky_relu(x, LEAKY)
      x = Dense(head[2], use_bias=self.bias, name='fc2', **kw)(x)
    else:
      x = Dense(head[0], use_bias=self.bias, name='fc1', **kw)(x)
    return x.astype(jnp.float32)


HSC_NAMES = tuple(HSC_ARCHS)
_HSC_CLASSES = {n: type(n, (HSCNet,), {'NAME': n, 'fcdd_counterpart': HSC_ARCHS[n][3], '__module__': __name__})
                for n in HSC_NAMES}


# AE baselines (spec §1.5): encoder = HSC net; decoder steps:
#   ('bn1d',) ('view', C, H, W) ('lrelu',) ('relu',) ('up',) ('convT', cout, k, p, bn, act) ('dense', n, bn)
#   ('sigmoid',)
_G = math.sqrt(2.0 / (1 + 0.01 ** 2))
AE_ARCHS = {
    'AE28': ('CNN28', (('view', 3, 4, 4), ('lrelu',), ('up',), ('convT', 4, 5, 2, True, True), ('up',),
                       ('convT', 8, 5, 3, True, True), ('up',), ('convT', 1, 5, 2, False, False), ('sigmoid',)), _G),
    'AE28_W': ('CNN28_W', (('view', 3, 4, 4), ('lrelu',), ('up',), ('convT', 64, 5, 2, True, True), ('up',),
                           ('convT', 128, 5, 3, True, True), ('up',), ('convT', 1, 5, 2, False, False),
                           ('sigmoid',)), None),
    'AE32': ('CNN32', (('bn1d',), ('view', 4, 4, 4), ('lrelu',), ('convT', 128, 5, 2, True, True), ('up',),
                       ('convT', 64, 5, 2, True, True), ('up',), ('convT', 32, 5, 2, True, True), ('up',),
                       ('convT', 3, 5, 2, False, False)), _G),
    'AE32_LW3K': ('CNN32_LW3K', (('bn1d',), ('view', 4, 4, 4), ('lrelu',), ('convT', 128, 3, 1, True, True),
                                 ('up',), ('convT', 256, 3, 1, True, True), ('convT', 256, 3, 1, True, True),
                                 ('up',), ('convT', 128, 3, 1, True, True), ('up',),
                                 ('convT', 3, 3, 1, False, False)), None),
    'AE224': ('CNN224', (('bn1d',), ('view', 16, 7, 7), ('lrelu',), ('convT', 64, 3, 1, True, True), ('up',),
                         ('convT', 128, 3, 1, True, True), ('up',), ('convT', 128, 3, 1, True, True), ('up',),
                         ('convT', 64, 3, 1, True, True), ('convT', 32, 3, 1, True, True), ('up',),
                         ('convT', 8, 5, 2, True, True), ('up',), ('convT', 'C', 5, 2, False, False),
                         ('sigmoid',)), _G),
}
_VGG_DEC = (('bn1d',), ('relu',), ('dense', 25088, True), ('relu',), ('view', 512, 7, 7), ('up',),
            ('convT', 512, 3, 1, True, 'relu'), ('convT', 512, 3, 1, True, 'relu'), ('up',),
            ('convT', 512, 3, 1, True, 'relu'), ('convT', 256, 3, 1, True, 'relu'), ('up',),
            ('convT', 256, 3, 1, True, 'relu'), ('convT', 128, 3, 1, True, 'relu'), ('up',),
            ('convT', 64, 3, 1, True, 'relu'), ('up',), ('convT', 'C', 3, 1, False, False))
for _n in ('AE224_VGG', 'AE224_VGG_F', 'AE224_VGG_NOPT'):
  AE_ARCHS[_n] = (_n.replace('AE', 'CNN'), _VGG_DEC, None)


class AENet(nn.Module):
  NAME = None
  fcdd_counterpart = None
  bias: bool = True
  torch_init: bool = True
  bn_unbiased_var: bool = True
  frozen_bn: str = 'parity'
  dtype: Any = jnp.float32
  remat: Optional[bool] = None

  @nn.compact
  def __call__(self, x, train=False, mask=None):
    enc_name, steps, gain = AE_ARCHS[self.NAME]
    channels = x.shape[-1]
    vgg = 'VGG' in self.NAME
    z = _HSC_CLASSES[enc_name](bias=self.bias, torch_init=self.torch_init, bn_unbiased_var=self.bn_unbiased_var,
                               frozen_bn=self.frozen_bn, dtype=self.dtype, remat=self.remat,
                               name='encoder')(x, train, mask)
    h = z
    eps = 1e-5 if vgg else 1e-4
    for i, st in enumerate(steps):
      kind = st[0]
      if kind == 'bn1d' or (kind == 'dense'):
        if kind == 'dense':
          h = Dense(st[1], torch_init=self.torch_init, dtype=self.dtype, name=f'dec{i}')(h)
          if st[2]:
            h = BatchNorm(eps=eps, affine=True, unbiased_var=self.bn_unbiased_var, name=f'dec{i}_bn')(h, train,
                                                                                                      mask)
        else:
          h = BatchNorm(eps=eps, affine=self.bias or vgg, unbiased_var=self.bn_unbiased_var,
                        name=f'dec{i}')(h, train, mask)
      elif kind == 'view':  # PyTorch view(C,H,W) then NCHW -> NHWC
        h = jnp.transpose(h.reshape(h.shape[0], st[1], st[2], st[3]), (0, 2, 3, 1))
      elif kind == 'lrelu':
        h = nn.leaky_relu(h, LEAKY)
      elif kind == 'relu':
        h = nn.relu(h)
      elif kind == 'up':
        h = upsample2(h)
      elif kind == 'sigmoid':
        h = nn.sigmoid(h)
      elif kind == 'convT':  # stride-1 ConvTranspose2d(k, padding p) == conv with padding k-1-p
        _, cout, k, p, bn, act = st
        cout = channels if cout == 'C' else cout
        h = Conv(cout, k, 1, k - 1 - p, use_bias=self.bias or vgg, torch_init=self.torch_init,
                 xavier_gain=gain, dtype=self.dtype, name=f'dec{i}')(h)
        if bn:
          h = BatchNorm(eps=eps, affine=self.bias or vgg, unbiased_var=self.bn_unbiased_var,
                        name=f'dec{i}_bn')(h, train, mask)
        if act == 'relu':
          h = nn.relu(h)
        elif act:
          h = nn.leaky_relu(h, LEAKY)
    return h.astype(jnp.float32)


AE_NAMES = tuple(AE_ARCHS)
_AE_CLASSES = {n: type(n, (AENet,), {'NAME': n, 'fcdd_counterpart': HSC_ARCHS[AE_ARCHS[n][0]][3],
                                      '__module__': __name__}) for n in AE_NAMES}

NAMES = FCDD_NAMES + HSC_NAMES + AE_NAMES
_CLASSES = {**_FCDD_CLASSES, **_HSC_CLASSES, **_AE_CLASSES}


# ----------------------------------------------------------------------------------------------------
# Public API

def _check_name(name):
  if name not in _CLASSES:
    raise ValueError(f'unknown net {name!r}; known nets: {", ".join(NAMES)}')


def create(name, **options):
  """Builds net `name`. Options: bias=True, torch_init=True (PyTorch default init, spec §1.1),
  bn_unbiased_var=True (spec §11.10), frozen_bn='parity'|'frozen' (spec §11.1), dtype (compute dtype;
  params stay float32), remat=None (feature stacks as fused conv-BN-activation-pool
  blocks that keep only each block's input and conv output for the backward pass, `cpu_conv.conv_block`;
  None = on XLA:CPU only, see `use_fused_blocks`); FCDD nets also any_size=False (True: inputs of any height
  and width, as the fully convolutional net allows; training configs keep the nominal-size check)."""
  _check_name(name)
  if options.get('frozen_bn', 'parity') not in ('parity', 'frozen'):
    raise ValueError(f"frozen_bn={options['frozen_bn']!r}; allowed: parity, frozen")
  return _CLASSES[name](**options)


def objective_of(name):
  _check_name(name)
  return 'fcdd' if name in FCDD_NAMES else ('hsc' if name in HSC_NAMES else 'ae')


def input_shape(name):
  """Nominal input (H, W, C)."""
  _check_name(name)
  if name in FCDD_ARCHS:
    return FCDD_ARCHS[name][0]
  if name in HSC_ARCHS:
    return HSC_ARCHS[name][0]
  shape = HSC_ARCHS[AE_ARCHS[name][0]][0]
  return shape


def reception(name):
  """Receptive field of an FCDD net (spec §1.2) without building it."""
  _check_name(name)
  if name not in _FCDD_CLASSES:
    raise ValueError(f'{name} is not an FCDD net; FCDD nets: {", ".join(FCDD_NAMES)}')
  return _FCDD_CLASSES[name].reception


def frozen_mask(name, params):
  """Pytree of bools like `params`: True = frozen (no gradient, no weight decay). `_F` VGG nets freeze
  convs 1-4 and their BN affine parameters (torchvision features[0:15])."""
  frozen_layers = {f'features_{i}' for i in VGG_FROZEN_INDICES} if name.endswith('_F') else set()
  flat = flax_traverse(params)
  return jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(params),
      [any(p in frozen_layers for p in path) for path in flat])


def flax_traverse(params):
  """Key paths (tuples of names) of the leaves of `params`, in tree_leaves order."""
  paths = []
  for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    paths.append(tuple(getattr(k, 'key', getattr(k, 'name', str(k))) for k in kp))
  return paths


def count_params(params):
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))

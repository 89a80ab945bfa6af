"""Fused conv -> BatchNorm -> activation -> max-pool blocks with a hand-written VJP (manual rematerialisation).

`conv_block(spec, ...)` runs one block of a feature stack as a single custom-VJP op that keeps only the
block's input and its conv output for the backward pass; `BlockSpec` describes the block. The conv and its
gradients come from `cpu_conv` (per-layer plan: XLA convs or bf16 GEMMs); this module holds the BatchNorm
statistics, the activation, the pool's first-maximum routing and the backward pass that recomputes them.
"""
import functools
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from fcdd_jax.models.cpu import cpu_conv
from fcdd_jax.models.cpu.onednn import block_tail

# The tail (BN, activation, pool) of a block whose conv runs on oneDNN runs as the extension's custom calls
# (`onednn.block_tail`); False: as jnp here (A/B benchmarks; read when a block is traced).
NATIVE_TAIL = True


class BlockSpec(NamedTuple):
  """Static description of one fused block (hashable: it selects the compiled custom VJP).

  pad: symmetric zero padding of the stride-1 conv. bn: 'batch' (normalise with the batch statistics),
  'running' (with given statistics: eval mode or frozen BN) or None. eps: BN epsilon. act: 'relu', 'leaky'
  or None; slope: leaky slope. pool: k of a non-overlapping k x k max pool after the activation, or 0.
  dtype: compute dtype ('float32' | 'bfloat16'). conv: the conv family, 'gemm' (bf16 GEMMs on XLA:CPU where
  they pay, `cpu_conv.gemm_conv`'s formulation), 'xla' (XLA's convolutions) or 'onednn' (oneDNN's, XLA FFI
  custom calls: `fcdd_jax.models.cpu.onednn`); plan: None (per layer,
  `cpu_conv.conv_plan`) or an explicit (forward, input gradient, weight gradient) plan."""
  pad: int
  bn: Optional[str]
  eps: float
  act: Optional[str]
  slope: float
  pool: int
  dtype: str
  conv: str
  plan: Optional[Tuple[str, str, str]] = None


def conv_block(spec, x, w, b, scale, bias, mean, var, mask=None):
  """One conv (+bias) -> BatchNorm -> activation -> max pool block of a feature stack, as a single custom-VJP
  op whose backward pass keeps only the block's input and its conv output and recomputes the rest.

  Autodiff of the unfused layers keeps every intermediate of the forward pass alive until the backward pass
  (on FCDD_CNN224_VGG_NOPT at batch 32: the f32 centred and normalised BN tensors, the bf16 BN and ReLU
  outputs and the im2col buffers of every layer, 4.7 GiB of XLA temp space in bf16). Here the residuals are
  the block input (compute dtype) and the conv output z (compute dtype, as the unfused net rounds it); the
  backward pass recomputes the BN normalisation, the activation, the pool's argmax and (for 'gemm') the
  im2col from them in a few elementwise passes.

  Args: x [N,H,W,Cin]; w [k,k,Cin,Cout] (HWIO, float32 params); b [Cout] conv bias or shape (0,) for none;
  scale, bias [Cout] BN affine or shape (0,) for none; mean, var [Cout] the running statistics used when
  spec.bn == 'running' (ignored otherwise, never differentiated); mask [N] or None: with spec.bn == 'batch', 1
  for the rows whose statistics count and 0 for the padding rows of a partial last batch (normalised with the
  real rows' statistics, like `layers.masked_batch_norm`, but without leaving the fused block: that unfused
  path kept full-size float32 BN temporaries and doubled the padded train step's XLA temp space, 1.5 -> 2.9 GB
  on FCDD_CNN224_VGG_NOPT bf16 batch 32, and set the run's peak memory).
  Returns (y, batch_mean, batch_var): y [N,H',W',Cout] in the compute dtype; the float32 batch statistics
  (biased variance) when spec.bn == 'batch' (for the running averages; their cotangents are ignored),
  else `mean`, `var` unchanged.

  Numerics are those of the unfused layers (conv in the compute dtype with float32 accumulation, bias added in
  float32, z rounded to the compute dtype, BN in float32, output rounded to the compute dtype) up to float
  rounding: the batch statistics take one pass (shifted sums, `_batch_stats`) instead of two. Two gradient
  conventions are PyTorch's: the pool's gradient goes to the first maximum of each window (row-major), and
  an activation at exactly 0 takes the negative side's slope. The conv bias before a batch-statistics BN gets
  its exact gradient, 0.
  """
  mask = jnp.zeros((0,), jnp.float32) if mask is None or spec.bn != 'batch' else jnp.asarray(mask, jnp.float32)
  if mask.shape[0] and mask.shape != x.shape[:1]:
    raise ValueError(f'fused_block.conv_block: mask has shape {mask.shape}; expected ({x.shape[0]},), one value '
                     'per row of x')
  return _block_vjp(spec)(x, w, b, scale, bias, mean, var, mask)


def _f32(a):
  return a.astype(jnp.float32)


def _windows(a, k):
  n, h, w, c = a.shape
  return a.reshape(n, h // k, k, w // k, k, c)


def _channel_sums(*terms):
  """Per-channel sums over all axes but the last of several float32 [N,H,W,C] arrays, in one pass over the
  data: ONE variadic reduction over the batch axis (the terms' elementwise producers fused into it; the kept
  H, W, C axes are contiguous, so it streams and vectorises), then sums of the [H,W,C] partials. Summing over
  W or over all pixels at once is 3-5x slower on XLA:CPU (strided, sequential accumulation that also loses
  ~1e-3 of a variance over ~10^6 pixels); a single-output float32 reduce goes to YNNPACK, which first
  materialises its input in memory (a full-size float32 temporary per statistic)."""
  zero = jnp.zeros((), jnp.float32)
  partial = jax.lax.reduce(tuple(terms), (zero,) * len(terms),
                           lambda a, b: tuple(u + v for u, v in zip(a, b)), (0,))
  return tuple(jnp.sum(q, tuple(range(q.ndim - 1))) for q in partial)


def _row_mask(mask):
  """[N] row mask -> [N,1,1,1] (float32) for broadcasting against [N,H,W,C]."""
  return mask.reshape(-1, 1, 1, 1)


def _count(a, mask):
  """Number of positions the batch statistics of a [N,H,W,C] average over: all, or the masked rows' only."""
  if not mask.shape[0]:
    return a.size // a.shape[-1]
  return jnp.sum(mask) * (a.shape[1] * a.shape[2])


def _batch_stats(a, mask):
  """Per-channel batch mean and biased variance of a [N,H,W,C] (float32), in one pass over the data:
  sums of d = a - K and d^2 with K the first (counted) image's channel mean (the shifted-data algorithm; K lies
  within a few standard deviations of the mean, which keeps the cancellation in E[d^2] - E[d]^2 small).
  `mask` [N] (or shape (0,): every row counts): only the rows with mask 1 count; the others are zeroed in the
  sums with a select (not a product: a padding row's inf or NaN stays out)."""
  n = _count(a, mask)
  if mask.shape[0]:
    first = jnp.argmax(mask > 0)
    shift = jnp.mean(jax.lax.dynamic_index_in_dim(a, first, 0), axis=(0, 1, 2))
    d = jnp.where(_row_mask(mask) > 0, a - shift, 0.0)
  else:
    shift = jnp.mean(a[:1], axis=(0, 1, 2))
    d = a - shift
  s1, s2 = _channel_sums(d, d * d)
  m1 = s1 / n
  return shift + m1, jnp.maximum(s2 / n - m1 * m1, 0.0)


def _first_max(values):
  """(max, row-major index of the first maximum) of a list of equally shaped arrays, elementwise."""
  y = values[0]
  idx = jnp.zeros(y.shape, jnp.int32)
  for t in range(1, len(values)):
    take = values[t] > y  # strict: an earlier maximum keeps its place
    y = jnp.where(take, values[t], y)
    idx = jnp.where(take, t, idx)
  return y, idx


def _window_views(a, k):
  """The k*k strided views [N,H/k,W/k,C] of the non-overlapping k x k windows of a [N,H,W,C], row-major."""
  aw = _windows(a, k)
  return [aw[:, :, t // k, :, t % k, :] for t in range(k * k)]


def _after(x, g):
  """x, made data-dependent on the cotangent g without changing it (unless g holds a NaN, where the gradient is
  NaN anyway): XLA would otherwise schedule backward-pass recomputations from forward values (im2col,
  shifted copies) early in the forward pass, or merge them with the forward's own (CSE), and keep their
  results alive in between. XLA:CPU removes `optimization_barrier`s before it gets there."""
  g0 = g.reshape(-1)[0]
  b = cpu_conv.as_bits(x)
  return cpu_conv.from_bits(jnp.where(g0 == g0, b, jnp.zeros((), b.dtype)), x.dtype)


def _round_to(a, dtype):
  """float32 a rounded to `dtype`'s precision, kept in float32 (bfloat16: reduce_precision to 8 exponent and
  7 mantissa bits, round-to-nearest-even, as a cast to bfloat16 and back). XLA:CPU emulates bf16 arithmetic
  op by op (convert, op, convert), so the elementwise work stays in float32 on rounded values."""
  if jnp.dtype(dtype) == jnp.dtype(jnp.bfloat16):
    return jax.lax.reduce_precision(a, exponent_bits=8, mantissa_bits=7)
  return a


def _bn_act(spec, z, mean, inv, scale, bias):
  """The block's elementwise tail before the pool, in float32 on values rounded as in the compute dtype:
  BN (float32) -> rounded to the compute dtype -> activation (a leaky product rounded again)."""
  dtype = jnp.dtype(spec.dtype)
  a = _f32(z)
  if spec.bn:
    a = (a - mean) * inv
    if scale.shape[0]:
      a = a * scale + bias
  a = _round_to(a, dtype)
  if spec.act == 'relu':
    return jnp.maximum(a, 0.0)
  if spec.act == 'leaky':
    slope = float(dtype.type(spec.slope))  # the slope as the compute dtype holds it (a NumPy scalar: no tracing)
    return jnp.where(a > 0, a, _round_to(a * slope, dtype))
  return a


def native_tail(spec):
  """Whether the block's BN-activation-pool tail runs as the oneDNN extension's custom calls (`NATIVE_TAIL`)."""
  return spec.conv == 'onednn' and NATIVE_TAIL


def _block_forward(spec, x, w, b, scale, bias, mean, var, mask):
  """Returns (y, batch_mean, batch_var, residuals)."""
  dtype = jnp.dtype(spec.dtype)
  xc = x.astype(dtype)
  z, cols = cpu_conv.conv_forward_biased(spec, xc, w, b)  # in the unfused Conv's output dtype; kept for the backward
  if native_tail(spec):
    y, mean, var = block_tail.forward(spec, z, mean, var, scale, bias, mask)
    return y, mean, var, (xc, z, y, cols)
  if spec.bn == 'batch':
    mean, var = _batch_stats(_f32(z), mask)
  inv = jax.lax.rsqrt(var + spec.eps) if spec.bn else None
  if spec.pool:  # the max of the k*k strided views: one elementwise pass (a reduce over window axes is slower)
    y = _first_max([_bn_act(spec, v, mean, inv, scale, bias) for v in _window_views(z, spec.pool)])[0]
  else:
    y = _bn_act(spec, z, mean, inv, scale, bias)
  y = y.astype(dtype)  # exact: the values are already rounded to dtype
  return y, mean, var, (xc, z, y, cols)


@functools.lru_cache(maxsize=None)
def _block_vjp(spec):

  @jax.custom_vjp
  def block(x, w, b, scale, bias, mean, var, mask):
    return _block_forward(spec, x, w, b, scale, bias, mean, var, mask)[:3]

  def fwd(x, w, b, scale, bias, mean, var, mask):
    y, bm, bv, (xc, z, yk, cols) = _block_forward(spec, x, w, b, scale, bias, mean, var, mask)
    zero = jnp.zeros((0,), x.dtype)  # carries x's dtype only
    return (y, bm, bv), (xc, z, yk, cols, w, b, scale, bias, mean, var, bm, bv, mask, zero)

  def bwd(res, cts):
    xc, z, y, cols, w, b, scale, bias, mean_in, var_in, bm, bv, mask, x_dtype = res
    mean, var = (bm, bv) if spec.bn == 'batch' else (mean_in, var_in)
    if native_tail(spec):
      dz, dscale, dbias, db = block_tail.backward(spec, z, cts[0], mean, var, scale, bias, mask)
    else:
      dz, dscale, dbias, db = _tail_backward(spec, z, y, cts[0], mean, var, scale, bias, mask)
    dx, dw = cpu_conv.conv_backward(spec, _after(xc, cts[0]), w, dz, cols)
    grads = (dx.astype(x_dtype.dtype), dw.astype(w.dtype), db.astype(b.dtype) if b.shape[0] else b,
             dscale if scale.shape[0] else scale, dbias if bias.shape[0] else bias,
             jnp.zeros_like(mean_in), jnp.zeros_like(var_in), jnp.zeros_like(mask))
    return grads

  block.defvjp(fwd, bwd)
  return block


def _tail_backward(spec, z, y, gy, mean, var, scale, bias, mask):
  """(dz float32, dscale, dbias, db) of the block's tail in jnp, recomputed from the conv output z."""
  inv = jax.lax.rsqrt(var + spec.eps) if spec.bn else None
  gy = _f32(gy)
  z = _after(z, gy)  # recomputations from z belong to the backward pass (no CSE with the forward's)
  # Cotangent of the activation's input at the (pooled) output positions; the activation's slope there
  # follows from the sign of the output (a > 0 <=> y > 0).
  if spec.act == 'relu':
    ga = jnp.where(y > 0, gy, 0.0)
  elif spec.act == 'leaky':
    ga = jnp.where(y > 0, gy, gy * spec.slope)
  else:
    ga = gy
  xhat = lambda zz: (_f32(zz) - mean) * inv
  c = z.shape[-1]
  n = _count(z, mask)
  none = jnp.zeros((0,), jnp.float32)
  dscale, dbias = none, none
  if spec.pool:
    # The pool sends each window's gradient to its first maximum (recomputed from z: BN -> activation ->
    # first max of the k*k views, elementwise). The BN sums only involve those positions: they run over
    # the pooled grid, reading each window's k*k values of z once.
    k = spec.pool
    views = _window_views(z, k)
    idx = _first_max([_bn_act(spec, v, mean, inv, scale, bias) for v in views])[1]
    if spec.bn:
      xh_at = xhat(views[0])
      for t in range(1, k * k):
        xh_at = jnp.where(idx == t, xhat(views[t]), xh_at)
      dbeta, dgamma = _channel_sums(ga, ga * xh_at)
    shape6 = _windows(z, k).shape
    pos = (jax.lax.broadcasted_iota(jnp.int32, shape6, 2) * k + jax.lax.broadcasted_iota(jnp.int32, shape6, 4))
    g = jnp.where(pos == idx[:, :, None, :, None, :], ga[:, :, None, :, None, :], 0.0).reshape(z.shape)
  else:
    g = ga
    if spec.bn:
      dbeta, dgamma = _channel_sums(g, g * xhat(z))
  if spec.bn:
    gamma = scale if scale.shape[0] else jnp.ones((c,), jnp.float32)
    if scale.shape[0]:
      dscale, dbias = dgamma, dbeta
    if spec.bn == 'batch':
      if mask.shape[0]:  # every row is normalised with the counted rows' statistics, which depend on those only
        m = _row_mask(mask)
        dz = (gamma * inv) * (g - m * (dbeta / n) - (m * xhat(z)) * (dgamma / n))
      else:
        dz = (gamma * inv) * (g - dbeta / n - xhat(z) * (dgamma / n))
      db = jnp.zeros((c,), jnp.float32)  # the batch mean cancels the conv bias: its gradient is exactly 0
    else:
      dz = g * (gamma * inv)
      db = gamma * inv * dbeta
  else:
    dz = g
    db = _channel_sums(ga)[0]
  return dz, dscale, dbias, db

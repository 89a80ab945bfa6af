"""Stride-1 NHWC convolutions as bfloat16 GEMMs with float32 accumulation (for XLA:CPU).

On this CPU (AMD EPYC, AVX512-BF16) XLA:CPU runs a bf16 x bf16 -> f32 matmul ~2x faster than a float32
one (its YNNPACK GEMM: ~360 GFLOP/s on 2 cores), but its convolutions get no bf16 speed-up: a bf16 conv is
upcast and run as a float32 conv. `gemm_conv` therefore writes a stride-1 convolution and both gradients as
three GEMMs (custom VJP):

  forward      y    = im2col(x, pad)  @ W.reshape(k*k*Cin, Cout)                 [R, k*k*Cin] @ [.., Cout]
  input grad   dx   = im2col(dy, k-1-pad) @ flip(W)^T.reshape(k*k*Cout, Cin)     (a conv of dy)
  weight grad  dW^T = dy^T @ im2col(x, pad)                                      [Cout, R] @ [R, k*k*Cin]

im2col concatenates the k*k shifted windows along channels. It moves the data as uint16 (a bf16 pad/slice/
concatenate is upcast to float32 and back by XLA:CPU, ~4x slower), and the forward's im2col is kept for the
weight gradient. Every dot is kept in the canonical [M,K] @ [K,N] row-major form: a transposed operand next
to a dot gets folded into the dot's dimension numbers, which the bf16 GEMM does not take (XLA then upcasts
the dot to float32, ~2-3x slower), hence dy^T as a real 4-D transpose and dW^T transposed after a reshape.

Products of bf16 numbers are exact in float32 and all sums accumulate in float32
(`preferred_element_type`), so the only roundings are those of the bf16 operands. The weight enters in its
own dtype (float32 params) and its gradient is returned in float32, never rounded to bf16.
"""
import functools

import jax
import jax.numpy as jnp


def _as_bits(x):
  """Same-width unsigned-integer view of x: XLA:CPU upcasts bfloat16 data movement (pad, slice,
  concatenate, transpose) to float32 and back, which makes a bfloat16 im2col ~4x slower than a uint16 one."""
  if x.dtype.itemsize == 2 and jnp.issubdtype(x.dtype, jnp.floating):
    return jax.lax.bitcast_convert_type(x, jnp.uint16)
  return x


def _from_bits(b, dtype):
  return jax.lax.bitcast_convert_type(b, dtype) if b.dtype != dtype else b


def im2col(x, k, pad):
  """[N,H,W,C] -> [N,H',W',k*k*C] with H' = H + 2 pad - k + 1, columns ordered (i, j, c) like HWIO."""
  n, h, w, c = x.shape
  oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
  b = _as_bits(x)
  if pad:
    b = jnp.pad(b, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  if k > 1:
    b = jnp.concatenate([b[:, i:i + oh, j:j + ow, :] for i in range(k) for j in range(k)], axis=-1)
  return _from_bits(b, x.dtype)


def _mm(a, b):
  return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _fwd_impl(x, w, pad, dtype):
  k, _, ci, co = w.shape
  cols = im2col(x.astype(dtype), k, pad)
  n, oh, ow, kkc = cols.shape
  y = _mm(cols.reshape(-1, kkc), w.astype(dtype).reshape(kkc, co))
  return y.reshape(n, oh, ow, co), cols


def gemm_conv(x, w, pad, dtype=jnp.bfloat16):
  """Stride-1 convolution of x [N,H,W,Cin] with w [k,k,Cin,Cout] (HWIO), symmetric zero padding `pad`,
  computed as `dtype` GEMMs with float32 accumulation. Returns float32 [N,H',W',Cout]; x's cotangent is
  returned in x's dtype, w's in w's dtype (float32 params stay float32)."""
  return _gemm_conv(int(pad), jnp.dtype(dtype).name)(x, w)


@functools.lru_cache(maxsize=None)
def _gemm_conv(pad, dtype_name):
  dtype = jnp.dtype(dtype_name)

  @jax.custom_vjp
  def conv(x, w):
    return _fwd_impl(x, w, pad, dtype)[0]

  def fwd(x, w):
    y, cols = _fwd_impl(x, w, pad, dtype)
    return y, (cols, w, jnp.zeros((0,), x.dtype))  # x itself is not kept, only its dtype

  def bwd(res, dy):
    cols, w, x_dtype = res
    return _bwd_impl(cols, w, x_dtype.dtype, dy, pad, dtype)

  conv.defvjp(fwd, bwd)
  return conv


def _bwd_impl(cols, w, x_dtype, dy, pad, dtype):
  k, _, ci, co = w.shape
  x_hw = (cols.shape[1] + k - 1 - 2 * pad, cols.shape[2] + k - 1 - 2 * pad)
  dyc = dy.astype(dtype)
  # Weight gradient dW^T = dy^T @ cols ([Cout, R] @ [R, k*k*Cin]), reusing the forward's im2col. dy^T is a
  # real (4-D) transpose fused with the cast to `dtype`; the [Cout,k,k,Cin] result is transposed after a
  # reshape. Written as cols^T @ dy (or with 2-D transposes next to the dot), XLA folds the transpose into
  # the dot, which XLA:CPU's bf16 GEMM does not take: the dot then runs upcast to float32, ~2-3x slower.
  dyt = jnp.transpose(dy, (3, 0, 1, 2)).reshape(co, -1).astype(dtype)
  dw = _mm(dyt, cols.reshape(-1, k * k * ci)).reshape(co, k, k, ci).transpose(1, 2, 3, 0).astype(w.dtype)
  # Input gradient: a stride-1 convolution of dy with the flipped, transposed kernel (padding k-1-pad);
  # when pad > k-1 that padding is negative: convolve unpadded and crop.
  wt = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2).astype(dtype).reshape(k * k * co, ci)
  bp = k - 1 - pad
  dcols = im2col(dyc, k, max(bp, 0))
  n, oh, ow, _ = dcols.shape
  dx = _mm(dcols.reshape(-1, k * k * co), wt).reshape(n, oh, ow, ci)
  if bp < 0:  # pad > k - 1: x sits inside the padded frame at offset -bp
    dx = dx[:, -bp:-bp + x_hw[0], -bp:-bp + x_hw[1], :]
  return dx.astype(x_dtype), dw

"""The elementwise tail of a fused conv block (BatchNorm -> activation -> max pool, forward and backward) as two XLA
FFI custom calls of the oneDNN extension (`block_tail.cc`), for the blocks whose conv runs on oneDNN.

XLA:CPU runs the same tail written in jnp (`fused_block`) as a few fusions whose BatchNorm reductions do not
vectorise (about 0.3 G elements/s: on FCDD_CNN32_LW3K bf16 the statistics and gradient sums took ~0.35 s of a
2.3 s step). The C++ tail reads z once per pass with AVX-512 loops over the channels, on oneDNN's OpenMP threads.
Numerics: `fused_block._block_forward` and its VJP (see `block_tail.cc`); the batch statistics are accumulated
in double (XLA's path: float32 shifted sums).

  forward(spec, z, mean, var, scale, bias, mask)       -> (y, batch_mean, batch_var)
  backward(spec, z, gy, mean, var, scale, bias, mask)  -> (dz in z's dtype, dscale, dbias, db)

`spec` is a `fused_block.BlockSpec` (bn, eps, act, slope, pool are used); scale/bias/mask of shape (0,) when absent.
"""
import jax
import jax.numpy as jnp
import numpy as np

from fcdd_jax.models.cpu import onednn

_BN = {None: 0, 'batch': 1, 'running': 2}
_ACT = {None: 0, 'relu': 1, 'leaky': 2}


def _attrs(spec):
  return dict(bn=np.int64(_BN[spec.bn]), act=np.int64(_ACT[spec.act]), slope=np.float32(spec.slope),
              eps=np.float32(spec.eps), pool=np.int64(spec.pool))


def _f32(a):
  return jnp.asarray(a, jnp.float32)


def forward(spec, z, mean, var, scale, bias, mask):
  """(y [N,H/k,W/k,C] in z's dtype, batch mean, batch variance) of the block tail on the conv output z [N,H,W,C];
  with spec.bn != 'batch' the given mean and var are returned unchanged."""
  n, h, w, c = z.shape
  k = max(spec.pool, 1)
  out = (jax.ShapeDtypeStruct((n, h // k, w // k, c), z.dtype), jax.ShapeDtypeStruct((c,), jnp.float32),
         jax.ShapeDtypeStruct((c,), jnp.float32))
  mean_in, var_in = (_f32(mean), _f32(var)) if mean.shape[0] else (jnp.zeros((c,), jnp.float32),) * 2
  y, bm, bv = onednn.ffi_call('fcdd_block_tail_fwd', out)(z, mean_in, var_in, _f32(scale), _f32(bias), _f32(mask),
                                                          **_attrs(spec))
  return (y, bm, bv) if spec.bn == 'batch' else (y, mean, var)


def backward(spec, z, gy, mean, var, scale, bias, mask):
  """(dz in z's dtype, dscale, dbias (shape (0,) without BN affine), db [C] the conv bias's gradient) for the
  cotangent gy of the tail's output; mean/var: the statistics the forward normalised with."""
  c = z.shape[-1]
  out = (jax.ShapeDtypeStruct(z.shape, z.dtype), jax.ShapeDtypeStruct(scale.shape, jnp.float32),
         jax.ShapeDtypeStruct(bias.shape, jnp.float32), jax.ShapeDtypeStruct((c,), jnp.float32))
  mean_in, var_in = (_f32(mean), _f32(var)) if mean.shape[0] else (jnp.zeros((c,), jnp.float32),) * 2
  return onednn.ffi_call('fcdd_block_tail_bwd', out)(z, gy.astype(z.dtype), mean_in, var_in, _f32(scale), _f32(bias),
                                                     _f32(mask), **_attrs(spec))

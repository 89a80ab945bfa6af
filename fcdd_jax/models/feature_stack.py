"""Feature stacks: a layer list (small tuples) run as a linen module, plain or as fused blocks.

Layers are described by small tuples so that architecture, receptive field and parameter naming come from
one place:
  ('conv', cout, k, stride, pad, bn, act[, idx])   conv (+ BatchNorm) (+ activation)
  ('pool', k, stride, pad[, idx])                   max pool (padding with -inf)
VGG layers carry torchvision's `features.<idx>` index and are named after it (features_<idx>) so pretrained
weights map 1:1. `FeatureStack` runs a list with the `layers` blocks, or (`fused`, default on XLA:CPU, see
`use_fused_blocks`) each stride-1 conv (+ BN + activation + following non-overlapping pool) as one
`fused_block.conv_block` with the same variables. `VGG11_FEATURES` is the list shared by the VGG-based FCDD
and HSC nets.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcdd_jax.models.cpu import fused_block
from fcdd_jax.models import layers as layers_lib  # (`layers` is FeatureStack's field)


# VGG11-BN features (torchvision configuration "A"), with torchvision module indices.
VGG11_FEATURES = (
    ('conv', 64, 3, 1, 1, True, True, 0), ('pool', 2, 2, 0, 3),
    ('conv', 128, 3, 1, 1, True, True, 4), ('pool', 2, 2, 0, 7),
    ('conv', 256, 3, 1, 1, True, True, 8), ('conv', 256, 3, 1, 1, True, True, 11), ('pool', 2, 2, 0, 14),
    ('conv', 512, 3, 1, 1, True, True, 15), ('conv', 512, 3, 1, 1, True, True, 18), ('pool', 2, 2, 0, 21),
    ('conv', 512, 3, 1, 1, True, True, 22), ('conv', 512, 3, 1, 1, True, True, 25), ('pool', 2, 2, 0, 28),
)
VGG_FROZEN_INDICES = (0, 1, 4, 5, 8, 9, 11, 12)  # convs 1-4 and their BNs (torchvision features[0:15])


def conv_layer(cout, k, p, bn=True, act=True, s=1):
  """A conv layer tuple (+ BatchNorm, + activation by default)."""
  return ('conv', cout, k, s, p, bn, act)


def pool_layer(k=2, s=2, p=0):
  """A max-pool layer tuple."""
  return ('pool', k, s, p)


class _ConvWeights(nn.Module):
  """The variables of a `Conv` (same names, shapes, init and creation order) without computing it: the fused
  blocks (`fused_block.conv_block`) take them as arrays."""
  features: int
  kernel: int
  use_bias: bool = True
  torch_init: bool = True

  @nn.compact
  def __call__(self, cin):
    fan_in = cin * self.kernel * self.kernel
    k_init = layers_lib.torch_uniform(fan_in) if self.torch_init else nn.initializers.lecun_normal()
    b_init = layers_lib.torch_uniform(fan_in) if self.torch_init else nn.initializers.zeros
    kernel = self.param('kernel', k_init, (self.kernel, self.kernel, cin, self.features))
    bias = self.param('bias', b_init, (self.features,)) if self.use_bias else jnp.zeros((0,), jnp.float32)
    return kernel, bias


class _BatchNormVariables(nn.Module):
  """The variables of a `BatchNorm` (same names); `__call__(stats_fn)` runs stats_fn(scale, bias, mean, var)
  -> (y, batch_mean, batch_var) and updates the running statistics like `BatchNorm` does."""
  features: int
  momentum: float = layers_lib.BN_MOMENTUM
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
  """Whether feature stacks run as fused conv-BN-activation-pool blocks (`fused_block.conv_block`, a custom VJP
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
        x = layers_lib.max_pool(x, l[1], l[2], l[3])
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
      x = layers_lib.Conv(cout, k, s, p, use_bias=self.bias or self.vgg, torch_init=self.torch_init,
                          dtype=self.dtype, name=cname)(x)
      if bn:
        x = layers_lib.BatchNorm(eps=eps, affine=self.bias or self.vgg, unbiased_var=self.bn_unbiased_var,
                                 use_running=use_running, name=bname)(x, train, mask)
      if act:
        x = nn.relu(x) if self.vgg else nn.leaky_relu(x, layers_lib.LEAKY)
      i += 1
    return x

  def _fused(self, x, cout, k, p, bn, act, pool, eps, use_running, train, cname, bname, mask=None):
    dtype = jnp.dtype(self.dtype)
    w, b = _ConvWeights(cout, k, use_bias=self.bias or self.vgg, torch_init=self.torch_init, name=cname)(
        x.shape[-1])
    conv = 'onednn' if layers_lib.use_onednn_conv(dtype, 1, x) else (
        'gemm' if layers_lib.use_gemm_conv(dtype, 1, x.shape[-1], x=x) else 'xla')
    mode = None if not bn else ('batch' if train and not use_running else 'running')
    spec = fused_block.BlockSpec(pad=p, bn=mode, eps=eps,
                                 act=(None if not act else 'relu' if self.vgg else 'leaky'), slope=layers_lib.LEAKY,
                                 pool=pool, dtype=dtype.name, conv=conv)
    none = jnp.zeros((0,), jnp.float32)
    if not bn:
      return fused_block.conv_block(spec, x, w, b, none, none, none, none)[0]
    hw = (x.shape[1] + 2 * p - k + 1) * (x.shape[2] + 2 * p - k + 1)
    if mask is not None and mode == 'batch':
      # a padded batch: the block's statistics count the real rows only (one fused block all the same: the
      # unfused conv + masked BatchNorm doubled the step's temporary memory, fused_block.conv_block)
      n = jnp.sum(jnp.asarray(mask, jnp.float32)) * hw
    else:
      mask, n = None, x.shape[0] * hw
    return _BatchNormVariables(cout, affine=self.bias or self.vgg, unbiased_var=self.bn_unbiased_var,
                               update=mode == 'batch', name=bname)(
        n, lambda scale, bias, mean, var: fused_block.conv_block(spec, x, w, b, scale, bias, mean, var, mask))


def check_input(name, x, shape):
  """Raises ValueError unless x [N,H,W,C] has the nominal height and width shape[:2] of net `name`."""
  if tuple(x.shape[1:3]) != tuple(shape[:2]):
    raise ValueError(f'net {name} takes inputs [N,{shape[0]},{shape[1]},C]; got shape {tuple(x.shape)}')


# The options every net takes (FCDD, HSC and AE nets; `models.create(name, **options)`), declared once.
NET_OPTIONS = ('bias', 'torch_init', 'bn_unbiased_var', 'frozen_bn', 'dtype', 'remat')


class Net(nn.Module):
  """Base of every net: the NET_OPTIONS fields and the feature stack built with them.

  bias: conv biases; torch_init: PyTorch's default init (spec §1.1); bn_unbiased_var: running variance from
  the unbiased batch variance (spec §11.10); frozen_bn: 'parity' | 'frozen' (spec §11.1; `_F` nets only);
  dtype: compute dtype (params stay float32); remat: fused conv-BN-activation-pool blocks that keep only each
  block's input and conv output for the backward pass (None = on XLA:CPU only, `use_fused_blocks`)."""
  NAME = None
  bias: bool = True
  torch_init: bool = True
  bn_unbiased_var: bool = True
  frozen_bn: str = 'parity'
  dtype: Any = jnp.float32
  remat: Any = None

  def net_options(self):
    """{option: value} of this net, to build another net (e.g. an AE's encoder) with the same options."""
    return {k: getattr(self, k) for k in NET_OPTIONS}

  def features(self, layers, vgg, x, train, mask):
    """The feature stack `layers` of this net on x (parameters under 'features')."""
    frozen = self.NAME.endswith('_F') and self.frozen_bn == 'frozen'
    return FeatureStack(layers, vgg=vgg, bias=self.bias, torch_init=self.torch_init,
                        bn_unbiased_var=self.bn_unbiased_var,
                        frozen_bn_indices=VGG_FROZEN_INDICES if frozen else (), dtype=self.dtype,
                        fused=use_fused_blocks(self.remat), name='features')(x, train, mask)

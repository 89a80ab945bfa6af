"""The baselines of the paper in flax.linen, NHWC: HSC nets (spec §1.4, a feature stack with a fully connected
head, returning a feature vector [N,d]) and AE nets (spec §1.5, an HSC encoder and a decoder, returning a
reconstruction [N,H,W,C]).

`HSC_CLASSES` / `AE_CLASSES` map each name to its class; `models` holds the registry over all nets
(`models.create`). Every class carries `.fcdd_counterpart`, the FCDD net whose receptive field blurs its
gradient heatmaps.
"""
import math

import flax.linen as nn
import jax.numpy as jnp

from fcdd_jax.models import feature_stack
from fcdd_jax.models import layers as layers_lib  # (`layers` names layer lists below)

_conv, _pool = feature_stack.conv_layer, feature_stack.pool_layer

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
  HSC_ARCHS[_n] = ((224, 224, 3), feature_stack.VGG11_FEATURES,
                   ('vgg', 4096, 4096) + ((1000,) if _n.endswith('1000') else ()), _cp)


class HSCNet(feature_stack.Net):
  """An HSC net; subclasses set NAME (architecture from HSC_ARCHS)."""
  fcdd_counterpart = None

  @nn.compact
  def __call__(self, x, train=False, mask=None):
    shape, layers, head, _ = HSC_ARCHS[self.NAME]
    feature_stack.check_input(self.NAME, x, shape)
    vgg = head[0] == 'vgg'
    x = self.features(layers, vgg, x, train, mask)
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # flatten in PyTorch (C,H,W) order
    kw = dict(torch_init=self.torch_init, dtype=self.dtype)
    if vgg:  # classifier: Linear ReLU Dropout Linear [ReLU Dropout Linear]
      x = layers_lib.Dense(head[1], name='classifier_0', **kw)(x)
      x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
      x = layers_lib.Dense(head[2], name='classifier_3', **kw)(x)
      if len(head) > 3:
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
        x = layers_lib.Dense(head[3], name='classifier_6', **kw)(x)
    elif head[0] == 'bn':
      x = layers_lib.Dense(head[1], use_bias=self.bias, name='fc1', **kw)(x)
      x = layers_lib.BatchNorm(eps=1e-4, affine=self.bias, unbiased_var=self.bn_unbiased_var, name='bn1d')(
          x, train, mask)
      x = nn.leaky_relu(x, layers_lib.LEAKY)
      x = layers_lib.Dense(head[2], use_bias=self.bias, name='fc2', **kw)(x)
    else:
      x = layers_lib.Dense(head[0], use_bias=self.bias, name='fc1', **kw)(x)
    return x.astype(jnp.float32)


HSC_CLASSES = {n: type(n, (HSCNet,), {'NAME': n, 'fcdd_counterpart': HSC_ARCHS[n][3], '__module__': __name__})
               for n in HSC_ARCHS}


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


class AENet(feature_stack.Net):
  """An AE net; subclasses set NAME (encoder and decoder steps from AE_ARCHS)."""
  fcdd_counterpart = None

  @nn.compact
  def __call__(self, x, train=False, mask=None):
    enc_name, steps, gain = AE_ARCHS[self.NAME]
    channels = x.shape[-1]
    vgg = 'VGG' in self.NAME
    z = HSC_CLASSES[enc_name](**self.net_options(), name='encoder')(x, train, mask)
    h = z
    eps = 1e-5 if vgg else 1e-4
    for i, st in enumerate(steps):
      kind = st[0]
      if kind == 'bn1d' or (kind == 'dense'):
        if kind == 'dense':
          h = layers_lib.Dense(st[1], torch_init=self.torch_init, dtype=self.dtype, name=f'dec{i}')(h)
          if st[2]:
            h = layers_lib.BatchNorm(eps=eps, affine=True, unbiased_var=self.bn_unbiased_var,
                                     name=f'dec{i}_bn')(h, train, mask)
        else:
          h = layers_lib.BatchNorm(eps=eps, affine=self.bias or vgg, unbiased_var=self.bn_unbiased_var,
                                   name=f'dec{i}')(h, train, mask)
      elif kind == 'view':  # PyTorch view(C,H,W) then NCHW -> NHWC
        h = jnp.transpose(h.reshape(h.shape[0], st[1], st[2], st[3]), (0, 2, 3, 1))
      elif kind == 'lrelu':
        h = nn.leaky_relu(h, layers_lib.LEAKY)
      elif kind == 'relu':
        h = nn.relu(h)
      elif kind == 'up':
        h = layers_lib.upsample2(h)
      elif kind == 'sigmoid':
        h = nn.sigmoid(h)
      elif kind == 'convT':  # stride-1 ConvTranspose2d(k, padding p) == conv with padding k-1-p
        _, cout, k, p, bn, act = st
        cout = channels if cout == 'C' else cout
        h = layers_lib.Conv(cout, k, 1, k - 1 - p, use_bias=self.bias or vgg, torch_init=self.torch_init,
                            xavier_gain=gain, dtype=self.dtype, name=f'dec{i}')(h)
        if bn:
          h = layers_lib.BatchNorm(eps=eps, affine=self.bias or vgg, unbiased_var=self.bn_unbiased_var,
                                   name=f'dec{i}_bn')(h, train, mask)
        if act == 'relu':
          h = nn.relu(h)
        elif act:
          h = nn.leaky_relu(h, layers_lib.LEAKY)
    return h.astype(jnp.float32)


AE_CLASSES = {n: type(n, (AENet,), {'NAME': n, 'fcdd_counterpart': HSC_ARCHS[AE_ARCHS[n][0]][3],
                                     '__module__': __name__}) for n in AE_ARCHS}

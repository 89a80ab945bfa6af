"""The nets by name: FCDD networks (spec §1.3) in flax.linen, NHWC, and the registry over all nets.

`create(name, **options)` builds a net; FCDD nets return the raw map phi [N,h',w',1] (before pseudo-Huber),
HSC nets a feature vector [N,d], AE nets a reconstruction [N,H,W,C] (the HSC and AE baselines live in
`baselines`). Variables: {'params', 'batch_stats'}. Every FCDD net class carries `.reception` (spec §1.2),
computed from its class-level layer list (the layer tuples of `feature_stack`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcdd_jax.models import baselines
from fcdd_jax.models import feature_stack
from fcdd_jax.models import layers as layers_lib  # (`layers` names layer lists below)
from fcdd_jax.models import receptive

_conv, _pool = feature_stack.conv_layer, feature_stack.pool_layer

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
  FCDD_ARCHS[_n] = ((224, 224, 3), feature_stack.VGG11_FEATURES[:9])  # up to the 6th conv (+BN+ReLU), torchvision 0..20


def _rf_layers(layers):
  """(k, stride, pad) of every layer, for `receptive.receptive_field`."""
  out = []
  for l in layers:
    if l[0] == 'conv':
      out.append((l[2], l[3], l[4]))
    else:
      out.append((l[1], l[2], l[3]))
  return out + [(1, 1, 0)]  # the final 1x1 conv


class FCDDNet(feature_stack.Net):
  """A fully convolutional FCDD net; subclasses set NAME (architecture from FCDD_ARCHS)."""
  reception = None
  any_size: bool = False      # accept inputs of any height and width (prediction); else the nominal size only

  @nn.compact
  def __call__(self, x, train=False, mask=None):
    shape, layers = FCDD_ARCHS[self.NAME]
    if not self.any_size:
      feature_stack.check_input(self.NAME, x, shape)
    vgg = self.NAME in VGG_FCDD
    x = self.features(layers, vgg, x, train, mask)
    x = layers_lib.Conv(1, 1, 1, 0, use_bias=self.bias or vgg, torch_init=self.torch_init, dtype=self.dtype,
                        out_dtype=jnp.float32, name='final')(x)
    return x.astype(jnp.float32)


FCDD_NAMES = tuple(FCDD_ARCHS)
_FCDD_CLASSES = {}
for _n in FCDD_NAMES:
  _shape, _layers = FCDD_ARCHS[_n]
  _FCDD_CLASSES[_n] = type(_n, (FCDDNet,), {
      'NAME': _n, 'reception': receptive.receptive_field(_rf_layers(_layers), _shape[0])[0],
      '__module__': __name__})

# The registry: every net by name.
HSC_NAMES = tuple(baselines.HSC_CLASSES)
AE_NAMES = tuple(baselines.AE_CLASSES)
NAMES = FCDD_NAMES + HSC_NAMES + AE_NAMES
_CLASSES = {**_FCDD_CLASSES, **baselines.HSC_CLASSES, **baselines.AE_CLASSES}


# ----------------------------------------------------------------------------------------------------
# Public API

def _check_name(name):
  if name not in _CLASSES:
    raise ValueError(f'unknown net {name!r}; known nets: {", ".join(NAMES)}')


def create(name, **options):
  """Builds net `name`. Options: `feature_stack.NET_OPTIONS` (bias, torch_init, bn_unbiased_var, frozen_bn,
  dtype, remat; meanings and defaults in `feature_stack.Net`); FCDD nets also any_size=False (True: inputs of
  any height and width, as the fully convolutional net allows; training configs keep the nominal-size check)."""
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
  if name in baselines.HSC_ARCHS:
    return baselines.HSC_ARCHS[name][0]
  shape = baselines.HSC_ARCHS[baselines.AE_ARCHS[name][0]][0]
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
  frozen_layers = {f'features_{i}' for i in feature_stack.VGG_FROZEN_INDICES} if name.endswith('_F') else set()
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

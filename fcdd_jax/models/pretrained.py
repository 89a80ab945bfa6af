"""Import torchvision's ImageNet `vgg11_bn` weights into the VGG-based nets (spec §1.3, §1.4, §11.17).

Nothing is downloaded here. Get the file yourself (torchvision `VGG11_BN_Weights.IMAGENET1K_V1`):
  https://download.pytorch.org/models/vgg11_bn-6002323d.pth
then pass it as `--config.model.pretrained_path=vgg11_bn-6002323d.pth` (needs torch: pip install
'fcdd_jax[torch]') or convert it once to a torch-free .npz:
  python -m fcdd_jax.pretrained --pth vgg11_bn-6002323d.pth --out vgg11_bn.npz

Keys are torchvision's state-dict names (`features.<i>.weight|bias|running_mean|running_var`,
`classifier.<i>.weight|bias`). Conv weights OIHW -> HWIO; Linear [out,in] -> [in,out] (the first classifier
layer's input is permuted from PyTorch's (C,H,W) flattening to ours, which the nets reproduce explicitly).
"""
import os
import sys

from absl import flags
import numpy as np

from fcdd_jax.app import cli

# torchvision vgg11_bn "features" layout: (conv index, bn index, cin, cout)
VGG11_CONVS = ((0, 1, 3, 64), (4, 5, 64, 128), (8, 9, 128, 256), (11, 12, 256, 256), (15, 16, 256, 512),
               (18, 19, 512, 512), (22, 23, 512, 512), (25, 26, 512, 512))
CLASSIFIER = ((0, 25088, 4096), (3, 4096, 4096), (6, 4096, 1000))


def expected_shapes():
  shapes = {}
  for c, b, cin, cout in VGG11_CONVS:
    shapes[f'features.{c}.weight'] = (cout, cin, 3, 3)
    shapes[f'features.{c}.bias'] = (cout,)
    for k in ('weight', 'bias', 'running_mean', 'running_var'):
      shapes[f'features.{b}.{k}'] = (cout,)
  for i, fin, fout in CLASSIFIER:
    shapes[f'classifier.{i}.weight'] = (fout, fin)
    shapes[f'classifier.{i}.bias'] = (fout,)
  return shapes


def load_vgg11_bn(path):
  """Reads a .npz or .pth (torch state dict) file -> {torchvision key: float32 array}."""
  if not path or not os.path.exists(path):
    raise FileNotFoundError(f'pretrained weights file {path!r} not found (get vgg11_bn-6002323d.pth from '
                            'https://download.pytorch.org/models/vgg11_bn-6002323d.pth)')
  if path.endswith('.npz'):
    with np.load(path, allow_pickle=False) as z:
      return {k: np.asarray(z[k], np.float32) for k in z.files}
  if path.endswith(('.pth', '.pt')):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ValueError(f'{path}: reading .pth files needs torch (pip install "fcdd_jax[torch]"), or convert it '
                       'to .npz on a machine with torch: python -m fcdd_jax.pretrained --pth FILE --out FILE.npz') from None
    sd = torch.load(path, map_location='cpu', weights_only=True)
    if isinstance(sd, dict) and 'state_dict' in sd:
      sd = sd['state_dict']
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in sd.items() if hasattr(v, 'detach')}
  raise ValueError(f'pretrained weights file {path!r}: expected .npz or .pth')


def _check(weights, path, keys):
  shapes = expected_shapes()
  for k in keys:
    if k not in weights:
      raise ValueError(f'{path}: key {k!r} missing (is this torchvision vgg11_bn?)')
    if tuple(weights[k].shape) != shapes[k]:
      raise ValueError(f'{path}: {k} has shape {tuple(weights[k].shape)}, expected {shapes[k]}')


def apply_pretrained(name, variables, path, weights=None):
  """Returns new {'params','batch_stats'} with the VGG11-BN layers of net `name` taken from `path`."""
  import flax  # pylint: disable=g-import-not-at-top
  weights = load_vgg11_bn(path) if weights is None else weights
  params = flax.core.unfreeze(variables['params'])
  stats = flax.core.unfreeze(variables.get('batch_stats', {}))
  if 'features' not in params and 'encoder' in params:  # AE VGG nets: the encoder is the HSC VGG net
    enc = apply_pretrained(name.replace('AE', 'CNN'), {'params': params['encoder'],
                                                      'batch_stats': stats.get('encoder', {})}, path, weights)
    params['encoder'], stats['encoder'] = enc['params'], enc['batch_stats']
    return {'params': params, 'batch_stats': stats}
  feats = params.get('features', {})
  convs = [cv for cv in VGG11_CONVS if f'features_{cv[0]}' in feats]
  if not convs:
    raise ValueError(f'net {name} has no VGG11-BN layers to load pretrained weights into')
  keys = []
  for c, b, _, _ in convs:
    keys += [f'features.{c}.weight', f'features.{c}.bias'] + [f'features.{b}.{k}' for k in
                                                              ('weight', 'bias', 'running_mean', 'running_var')]
  _check(weights, path, keys)
  for c, b, _, _ in convs:
    feats[f'features_{c}'] = {'kernel': np.transpose(weights[f'features.{c}.weight'], (2, 3, 1, 0)),
                              'bias': weights[f'features.{c}.bias']}
    feats[f'features_{b}'] = {'scale': weights[f'features.{b}.weight'], 'bias': weights[f'features.{b}.bias']}
    stats['features'][f'features_{b}'] = {'mean': weights[f'features.{b}.running_mean'],
                                          'var': weights[f'features.{b}.running_var']}
  for i, _, _ in CLASSIFIER:
    if f'classifier_{i}' in params:
      _check(weights, path, [f'classifier.{i}.weight', f'classifier.{i}.bias'])
      params[f'classifier_{i}'] = {'kernel': weights[f'classifier.{i}.weight'].T,
                                   'bias': weights[f'classifier.{i}.bias']}
  params['features'] = feats
  return {'params': params, 'batch_stats': stats}


def main(argv=None):
  """python -m fcdd_jax.pretrained --pth FILE.pth --out FILE.npz"""
  fv = flags.FlagValues()
  flags.DEFINE_string('pth', None, "torchvision's vgg11_bn checkpoint (vgg11_bn-6002323d.pth; needs torch).",
                      flag_values=fv)
  flags.DEFINE_string('out', None, 'The .npz file to write (for --config.model.pretrained_path; no torch needed).',
                      flag_values=fv)
  rest, code = cli.parse_tool_flags('fcdd_jax.pretrained', __doc__, fv, argv)
  if code is not None:
    return code
  if rest or not fv.pth or not fv.out:
    print('fcdd_jax.pretrained: error: needs --pth FILE and --out FILE, and nothing else (see --help)', file=sys.stderr)
    return 2
  try:
    w = load_vgg11_bn(fv.pth)
    _check(w, fv.pth, [k for k in expected_shapes() if k.startswith('features')])
  except (ValueError, FileNotFoundError) as e:
    print(f'fcdd_jax.pretrained: error: {e}', file=sys.stderr)
    return 2
  np.savez(fv.out, **w)
  print(f'wrote {fv.out} ({len(w)} arrays)')
  return 0


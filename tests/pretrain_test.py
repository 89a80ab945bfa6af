"""pipeline.pretrain and `python -m fcdd_jax.pretrain`: CIFAR-10 starting weights for the FCDD VGG nets."""
import json
import os

import jax
import numpy as np
from PIL import Image
import pytest

from fcdd_jax import pretrain as pretrain_cli
from fcdd_jax.data import constants
from fcdd_jax.data import transforms
from fcdd_jax.models import nets
from fcdd_jax.models import pretrained
from fcdd_jax.pipeline import pretrain

CONVS = (0, 4, 8, 11, 15, 18)   # the six convs of the FCDD VGG nets, torchvision vgg11_bn indices


def _fake_cifar10(root, train_per_class=24, test_per_class=6):
  """CIFAR-10's folder layout; each class one colour plus noise, so that a net that learns separates them. The
  colours are far apart (the RGB cube's corners, mid gray, one more): with random ones two classes could lie close
  and the test accuracy after a few steps sat at its bound."""
  rng = np.random.default_rng(0)
  colours = [[r, g, b] for r in (40, 215) for g in (40, 215) for b in (40, 215)] + [[128, 128, 128], [128, 40, 215]]
  colours = np.array(colours)
  for split, n in (('train', train_per_class), ('test', test_per_class)):
    for name, colour in zip(constants.CIFAR10_CLASSES, colours):
      d = os.path.join(root, split, name)
      os.makedirs(d)
      for i in range(n):
        img = np.clip(colour + rng.normal(0, 12, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(d, f'{i:03d}.png'))


def test_augment_crops_the_reflect_padded_image_and_flips():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
  out = pretrain.augment(images, np.random.default_rng(7))
  # the same draws, replayed: offsets (rows, then columns), then the flips
  draw = np.random.default_rng(7)
  oy, ox = draw.integers(0, 9, (2, 16))
  flip = draw.random(16) < 0.5
  for n in range(16):
    padded = np.pad(images[n], ((4, 4), (4, 4), (0, 0)), mode='reflect')
    want = padded[oy[n]:oy[n] + 32, ox[n]:ox[n] + 32]
    np.testing.assert_array_equal(out[n], want[:, ::-1] if flip[n] else want)
  assert 0 < flip.sum() < 16


def test_channel_stats_match_numpy_over_the_whole_set():
  images = np.random.default_rng(3).integers(0, 256, (37, 8, 8, 3), dtype=np.uint8)
  mean, std = transforms.channel_stats(images, chunk=5)   # what the pretraining normalises CIFAR-10 by
  ref = images.astype(np.float64) / 255
  np.testing.assert_allclose(mean, ref.mean(axis=(0, 1, 2)), rtol=1e-12)
  np.testing.assert_allclose(std, ref.std(axis=(0, 1, 2)), rtol=1e-9)
  # a list of images of different sizes (native-resolution custom data): every pixel counts once
  sizes = [images[:, :5, :7], images[:, 3:, 1:]]
  parts = [im for group in sizes for im in group]
  mean, std = transforms.channel_stats(parts)
  ref = np.concatenate([p.reshape(-1, 3) for p in parts]).astype(np.float64) / 255
  np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-12)
  np.testing.assert_allclose(std, ref.std(0), rtol=1e-9)


def test_torchvision_weights_are_oihw_with_the_batchnorm_statistics():
  rng = np.random.default_rng(2)
  net = pretrain.Classifier(10)
  v = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32), False))
  v = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), v)
  w = pretrain.torchvision_weights(v['params'], v['batch_stats'])
  shapes = pretrained.expected_shapes()
  assert set(w) == {f'features.{c}.{k}' for c in CONVS for k in ('weight', 'bias')} | {
      f'features.{c + 1}.{k}' for c in CONVS for k in ('weight', 'bias', 'running_mean', 'running_var')}
  for k, a in w.items():
    assert a.shape == shapes[k], k
  kern = np.asarray(v['params']['features']['features_15']['kernel'])   # HWIO
  for y, x, i, o in ((0, 0, 0, 0), (2, 1, 255, 511), (1, 2, 17, 300)):
    assert w['features.15.weight'][o, i, y, x] == kern[y, x, i, o]
  np.testing.assert_array_equal(w['features.16.running_var'], v['batch_stats']['features']['features_16']['var'])
  np.testing.assert_array_equal(w['features.5.weight'], v['params']['features']['features_5']['scale'])


def test_command_learns_and_writes_weights_the_pretrained_net_loads(tmp_path, capsys):
  data, out = str(tmp_path / 'cifar'), str(tmp_path / 'w.npz')
  _fake_cifar10(data)
  assert pretrain_cli.main(['--out', out, '--data', data, '--epochs', '2', '--batch', '16', '--lr', '0.02']) == 0
  epochs = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith('{')]
  assert [e['epoch'] for e in epochs] == [1, 2]
  assert epochs[-1]['test_accuracy'] >= 0.9, epochs      # 10 classes: chance is 0.1
  w = dict(np.load(out))
  assert all(np.all(np.isfinite(a)) for a in w.values())
  # the running statistics are the trained ones, not BatchNorm's initial zeros and ones
  assert np.abs(w['features.1.running_mean']).max() > 1e-3 and np.abs(w['features.1.running_var'] - 1).max() > 1e-3
  net = nets.create('FCDD_CNN224_VGG_F')
  v = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), np.zeros((1, 224, 224, 3), np.float32)))
  v = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), v)
  loaded = pretrained.apply_pretrained('FCDD_CNN224_VGG_F', v, out)
  np.testing.assert_array_equal(loaded['params']['features']['features_18']['kernel'],
                                np.transpose(w['features.18.weight'], (2, 3, 1, 0)))
  assert not [f for f in os.listdir(tmp_path) if f.endswith('.tmp.npz')]


@pytest.mark.parametrize('case', ['exists', 'not_npz', 'missing_class', 'no_folder'])
def test_command_errors_are_one_line_and_lose_nothing(tmp_path, capsys, case):
  data, out = str(tmp_path / 'cifar'), str(tmp_path / 'w.npz')
  _fake_cifar10(data, 1, 1)
  if case == 'exists':
    with open(out, 'w') as f:
      f.write('keep me')
  args = {'exists': ['--out', out, '--data', data],
          'not_npz': ['--out', str(tmp_path / 'w.pth'), '--data', data],
          'missing_class': ['--out', out, '--data', str(tmp_path)],
          'no_folder': ['--out', str(tmp_path / 'nope' / 'w.npz'), '--data', data]}[case]
  assert pretrain_cli.main(args) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('fcdd_jax.pretrain: error: ')
  assert {'exists': '--overwrite', 'not_npz': '.npz', 'missing_class': 'is missing',
          'no_folder': 'does not exist'}[case] in err[0]
  if case == 'exists':
    assert open(out).read() == 'keep me'
  else:
    assert not os.path.exists(out)

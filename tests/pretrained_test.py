"""Pretrained VGG11-BN import from generated files with torchvision's key names and shapes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcdd_jax.models import nets as models
from fcdd_jax.models import pretrained
from tests import support


def np_vgg_features(x, w, n_convs=6):
  """NumPy eval-mode VGG11-BN features up to the n-th conv+BN+ReLU (torchvision layout), NHWC."""
  h = x.astype(np.float64)
  pools_after = {0, 1, 3}
  for i, (c, b, _, _) in enumerate(pretrained.VGG11_CONVS[:n_convs]):
    k = np.transpose(w[f'features.{c}.weight'], (2, 3, 1, 0))
    hp = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros(h.shape[:3] + (k.shape[-1],))
    for di in range(3):
      for dj in range(3):
        out += hp[:, di:di + h.shape[1], dj:dj + h.shape[2]] @ k[di, dj]   # [n,h,w,c] @ [c,o]
    out += w[f'features.{c}.bias']
    out = (out - w[f'features.{b}.running_mean']) / np.sqrt(w[f'features.{b}.running_var'] + 1e-5)
    h = np.maximum(out * w[f'features.{b}.weight'] + w[f'features.{b}.bias'], 0)
    if i in pools_after:
      n, hh, ww, cc = h.shape
      h = h.reshape(n, hh // 2, 2, ww // 2, 2, cc).max((2, 4))
  return h


@pytest.fixture(scope='module')
def npz_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('w') / 'vgg11_bn.npz')
  np.savez(path, **support.fake_vgg_weights())
  return path


def _features(variables, x):
  net = models.create('FCDD_CNN224_VGG_F')
  _, state = net.apply(variables, x, mutable=['intermediates'], capture_intermediates=True)
  return np.asarray(state['intermediates']['features']['__call__'][0])


def test_npz_import_matches_numpy_features(npz_file):
  net = models.create('FCDD_CNN224_VGG_F')
  x = np.random.default_rng(1).normal(size=(1, 224, 224, 3)).astype(np.float32) * 0.5
  v = jax.jit(net.init)(jax.random.PRNGKey(0), jnp.asarray(x))
  v2 = pretrained.apply_pretrained('FCDD_CNN224_VGG_F', v, npz_file)
  np.testing.assert_array_equal(np.asarray(v2['params']['final']['kernel']), np.asarray(v['params']['final']['kernel']))
  got = _features(v2, jnp.asarray(x))
  want = np_vgg_features(x, support.fake_vgg_weights())
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_pth_import_and_converter(npz_file, tmp_path):
  torch = pytest.importorskip('torch', reason='torch not installed (pip install -e ".[torch]")')
  w = support.fake_vgg_weights(seed=3, classifier=True)
  pth = str(tmp_path / 'vgg11_bn.pth')
  torch.save({k: torch.from_numpy(v) for k, v in w.items()}, pth)
  loaded = pretrained.load_vgg11_bn(pth)
  for k in w:   # (np.array_equal: assert_array_equal takes seconds on the 100M-value classifier)
    assert loaded[k].dtype == w[k].dtype and np.array_equal(loaded[k], w[k]), k
  out = str(tmp_path / 'conv.npz')
  assert pretrained.main(['--pth', pth, '--out', out]) == 0
  assert set(np.load(out).files) == set(w)
  # HSC VGG net takes the classifier too
  net = models.create('CNN224_VGG')
  v = jax.eval_shape(lambda: net.init({'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(0)},
                                      jnp.zeros((1, 224, 224, 3))))
  v = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), v)
  v2 = pretrained.apply_pretrained('CNN224_VGG', v, pth)
  np.testing.assert_array_equal(v2['params']['classifier_3']['kernel'], w['classifier.3.weight'].T)
  np.testing.assert_array_equal(v2['batch_stats']['features']['features_26']['var'], w['features.26.running_var'])


def test_errors(npz_file, tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.npz.*download.pytorch.org'):
    pretrained.load_vgg11_bn(str(tmp_path / 'nope.npz'))
  w = support.fake_vgg_weights()
  del w['features.8.weight']
  bad = str(tmp_path / 'bad.npz')
  np.savez(bad, **w)
  v = jax.eval_shape(models.create('FCDD_CNN224_VGG').init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
  v = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), v)   # (the structure is what is checked)
  with pytest.raises(ValueError, match="key 'features.8.weight' missing"):
    pretrained.apply_pretrained('FCDD_CNN224_VGG', v, bad)
  w = support.fake_vgg_weights()
  w['features.4.weight'] = w['features.4.weight'][:, :32]
  np.savez(bad, **w)
  with pytest.raises(ValueError, match=r'features.4.weight has shape \(128, 32, 3, 3\), expected \(128, 64, 3, 3\)'):
    pretrained.apply_pretrained('FCDD_CNN224_VGG', v, bad)

"""Many runs in one program equal separate runs with the same seeds."""
import json
import os

import pytest

from fcdd_jax import models
from fcdd_jax import multirun
from fcdd_jax import train


def test_parse_runs():
  assert multirun.parse_runs('0-1x0,2') == [(0, 0), (0, 2), (1, 0), (1, 2)]
  with pytest.raises(train.ConfigError, match="expected 'CLASSESxSEEDS'"):
    multirun.parse_runs('oops')


def test_vmapped_runs_equal_separate_runs(make_config, tmp_path):
  res = multirun.train_and_evaluate_runs(make_config(runs='0x0-1', num_train_steps=6), str(tmp_path / 'multi'))
  assert len(res) == 2
  for s in (0, 1):
    sep = train.train_and_evaluate(make_config(seed=s, num_train_steps=6), str(tmp_path / f'sep{s}'))
    with open(tmp_path / 'multi' / 'normal_0' / f'seed_{s}' / 'results.json') as f:
      mr = json.load(f)
    assert mr['image_auc'] == pytest.approx(sep['image_auc'], abs=1e-4)
    assert mr['pixel_auc'] == pytest.approx(sep['pixel_auc'], abs=1e-4)
  assert os.path.exists(tmp_path / 'multi' / 'summary.md')


def test_many_runs_share_the_run_builder_with_blur(make_config, tmp_path, monkeypatch):
  """Many-runs mode builds model, step settings and initial states with `train.build_run`, as a single run:
  blurred HSC heatmaps (spec §8.3) reach its step settings, failures are not hidden."""
  built = []
  original = train.build_run
  def spy(*a, **kw):
    built.append(original(*a, **kw))
    return built[-1]
  monkeypatch.setattr(train, 'build_run', spy)
  res = multirun.train_and_evaluate_runs(
      make_config(runs='0x0', num_train_steps=2, **{'model.name': 'CNN32', 'loss.blur_heatmaps': True,
                                              'data.supervise_mode': 'malformed_normal'}),
      str(tmp_path / 'multi'))
  assert len(built) == 1 and built[0].step_config.blur and built[0].step_config.objective == 'hsc'
  assert built[0].step_config.blur_r == models.reception(models.create('CNN32').fcdd_counterpart).r > 0
  assert res[0]['image_auc'] is not None


def test_run_builder_applies_pretrained_weights(make_config, tmp_path):
  """Both entry points start VGG nets from the weight file (many-runs mode used to start from random)."""
  import types  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from fcdd_jax import pretrained  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  w = {k: rng.normal(size=s).astype(np.float32) for k, s in pretrained.expected_shapes().items()
       if not k.startswith('classifier')}
  w = {k: (np.abs(v) + 0.5 if k.endswith('running_var') else v) for k, v in w.items()}
  path = str(tmp_path / 'vgg11_bn.npz')
  np.savez(path, **w)
  c = make_config(**{'model.name': 'FCDD_CNN224_VGG_F', 'model.pretrained_path': path})
  info = types.SimpleNamespace(name='custom', image_shape=(224, 224, 3), train_gtmaps=False)
  built = train.build_run(c, info, steps_per_epoch=1)
  assert built.pretrained and built.frozen is not None
  state = built.init_state(jax.random.PRNGKey(0), None)
  conv0 = np.asarray(state.params['features']['features_0']['kernel'])
  ref = np.transpose(w['features.0.weight'], (2, 3, 1, 0))   # OIHW -> HWIO
  np.testing.assert_allclose(conv0, ref, rtol=0, atol=0)

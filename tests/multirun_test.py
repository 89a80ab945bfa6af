"""Many runs in one program equal separate runs with the same seeds, blur and pretrained weights included."""
import json
import os

import jax
import numpy as np
from PIL import Image
import pytest

from fcdd_jax.utils import checkpointing
from fcdd_jax.pipeline import config_checks
from fcdd_jax.models import nets as models
from fcdd_jax.pipeline import multirun
from fcdd_jax.models import pretrained
from fcdd_jax.pipeline import run as run_lib
from fcdd_jax.pipeline import train


def test_parse_runs():
  assert config_checks.parse_runs('0-1x0,2') == [(0, 0), (0, 2), (1, 0), (1, 2)]
  with pytest.raises(config_checks.ConfigError, match="expected 'CLASSESxSEEDS'"):
    config_checks.parse_runs('oops')


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


def test_many_runs_blur_hsc_heatmaps_as_a_single_run(make_config, tmp_path, monkeypatch):
  """loss.blur_heatmaps (spec §8.3) reaches many-runs mode: its pixel threshold (fitted on the heatmaps) and
  pixel AUC equal a blurred single run's and differ from an unblurred one's; it builds with `run.build_run`."""
  built = []
  original = run_lib.build_run
  def spy(*a, **kw):
    built.append(original(*a, **kw))
    return built[-1]
  monkeypatch.setattr(run_lib, 'build_run', spy)
  hsc = {'model.name': 'CNN32', 'data.supervise_mode': 'malformed_normal', 'num_train_steps': 2,
         'eval.train_heatmaps': False, 'eval.num_figure_samples': 2}
  multi = multirun.train_and_evaluate_runs(make_config(runs='0x0', **hsc, **{'loss.blur_heatmaps': True}),
                                           str(tmp_path / 'multi'))
  assert len(built) == 1 and built[0].step_config.blur
  assert built[0].step_config.blur_r == models.reception(models.create('CNN32').fcdd_counterpart).r > 0
  with open(tmp_path / 'multi' / 'normal_0' / 'seed_0' / 'results.json') as f:
    multi = json.load(f)
  single = {b: train.train_and_evaluate(make_config(**hsc, **{'loss.blur_heatmaps': b}), str(tmp_path / f'b{b}'))
            for b in (True, False)}
  assert multi['thresholds']['pixel'] == pytest.approx(single[True]['thresholds']['pixel'], rel=1e-4)
  assert multi['pixel_auc'] == pytest.approx(single[True]['pixel_auc'], abs=1e-4)
  assert single[False]['thresholds']['pixel'] != pytest.approx(single[True]['thresholds']['pixel'], rel=1e-2)


def _vgg_weights(tmp_path):
  """A random VGG11-BN weight file (torchvision names) and its weights."""
  rng = np.random.default_rng(0)
  w = {k: rng.normal(size=s).astype(np.float32) for k, s in pretrained.expected_shapes().items()
       if not k.startswith('classifier')}
  w = {k: (np.abs(v) + 0.5 if k.endswith('running_var') else v) for k, v in w.items()}
  path = str(tmp_path / 'vgg11_bn.npz')
  np.savez(path, **w)
  return path, w


def test_run_builder_applies_pretrained_weights(make_config, tmp_path):
  """The builder starts VGG nets from the weight file (kernels OIHW -> HWIO)."""
  path, w = _vgg_weights(tmp_path)
  c = make_config(**{'model.name': 'FCDD_CNN224_VGG_F', 'model.pretrained_path': path})
  built = run_lib.build_run(c, run_lib.DataShape((224, 224, 3), name='custom'), steps_per_epoch=1)
  assert built.pretrained and built.frozen is not None
  state = built.init_state(jax.random.PRNGKey(0))
  conv0 = np.asarray(state.params['features']['features_0']['kernel'])
  np.testing.assert_array_equal(conv0, np.transpose(w['features.0.weight'], (2, 3, 1, 0)))


def test_many_runs_start_from_the_pretrained_weights(make_config, tmp_path):
  """Many-runs mode trains VGG_F nets from the weight file (it used to start from random weights): the frozen
  first convs of the saved final state are the file's, the trained ones have moved."""
  path, w = _vgg_weights(tmp_path)
  root = tmp_path / 'parts'
  rng = np.random.default_rng(1)
  for split, cls, n in (('train', 'good', 8), ('test', 'good', 2), ('test', 'defect', 2)):
    os.makedirs(root / split / cls)
    for i in range(n):
      Image.fromarray(rng.integers(0, 255, (230, 230, 3), dtype=np.uint8)).save(root / split / cls / f'{i}.png')
  c = make_config('custom', runs='0x0', batch_size=8, num_train_steps=1, **{
      'model.name': 'FCDD_CNN224_VGG_F', 'model.pretrained_path': path, 'data.root': str(root),
      'data.cache_dir': str(tmp_path / 'cache'), 'eval.train_heatmaps': False, 'eval.num_figure_samples': 2})
  multirun.train_and_evaluate_runs(c, str(tmp_path / 'multi'))
  state, step = checkpointing.restore_for_inference(str(tmp_path / 'multi' / 'normal_0' / 'seed_0' / 'checkpoints'))
  assert step == 1
  feats = state['params']['features']
  np.testing.assert_array_equal(np.asarray(feats['features_0']['kernel']),
                                np.transpose(w['features.0.weight'], (2, 3, 1, 0)))   # frozen: as loaded
  np.testing.assert_array_equal(np.asarray(feats['features_8']['kernel']),
                                np.transpose(w['features.8.weight'], (2, 3, 1, 0)))
  assert not np.allclose(np.asarray(feats['features_15']['kernel']),
                         np.transpose(w['features.15.weight'], (2, 3, 1, 0)))          # trained: moved

"""Many runs in one program equal separate runs with the same seeds."""
import json
import os

import pytest

from configs import test as test_config
from fcdd_jax import multirun
from fcdd_jax import train


def _cfg(**kv):
  c = test_config.get_config()
  for k, v in kv.items():
    node = c
    *path, leaf = k.split('.')
    for p in path:
      node = node[p]
    node[leaf] = v
  return c


def test_parse_runs():
  assert multirun.parse_runs('0-1x0,2') == [(0, 0), (0, 2), (1, 0), (1, 2)]
  with pytest.raises(train.ConfigError, match="expected 'CLASSESxSEEDS'"):
    multirun.parse_runs('oops')


def test_vmapped_runs_equal_separate_runs(tmp_path):
  res = multirun.train_and_evaluate_runs(_cfg(runs='0x0-1', num_train_steps=6), str(tmp_path / 'multi'))
  assert len(res) == 2
  for s in (0, 1):
    sep = train.train_and_evaluate(_cfg(seed=s, num_train_steps=6), str(tmp_path / f'sep{s}'))
    with open(tmp_path / 'multi' / 'normal_0' / f'seed_{s}' / 'results.json') as f:
      mr = json.load(f)
    assert mr['image_auc'] == pytest.approx(sep['image_auc'], abs=1e-4)
    assert mr['pixel_auc'] == pytest.approx(sep['pixel_auc'], abs=1e-4)
  assert os.path.exists(tmp_path / 'multi' / 'summary.md')

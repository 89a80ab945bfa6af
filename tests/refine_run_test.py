"""The refinement driver (fcdd_jax/pipeline/refine_run.py) end to end on the polluted demo, at a tiny budget: subset
bookkeeping, precision/recall against a NumPy recomputation, resume at round granularity, determinism."""
import json
import os

import numpy as np
import pytest

from fcdd_jax.pipeline import config_checks
from fcdd_jax import input_pipeline
from fcdd_jax.pipeline import multirun
from fcdd_jax.pipeline import refine_run


def _config(make_config, **kw):
  cfg = make_config('test', **{'data.demo_num_train': 45, 'data.demo_num_test': 16, 'num_train_steps': 2,
                               'batch_size': 8, 'eval.num_figure_samples': 2, 'data.pollution': 0.1,
                               'refine.rounds': 2, 'refine.subsets': 3, 'refine.drop': '0.1', **kw})
  return cfg


def _read(workdir, name):
  with open(os.path.join(workdir, name)) as f:
    return json.load(f)


@pytest.fixture(scope='module')
def refined(tmp_path_factory, make_config):
  wd = str(tmp_path_factory.mktemp('refined'))
  cfg = _config(make_config)
  res = refine_run.train_and_evaluate(cfg, wd)
  return cfg, wd, res


def test_rounds_keep_what_they_do_not_drop_and_precision_recall_match_numpy(refined):
  cfg, wd, res = refined
  truth = input_pipeline.load_source(cfg).train_is_anomaly
  assert truth.sum() == 5 and len(truth) == 50                       # round(0.1 * 45 / 0.9) = 5 anomalies
  state = _read(wd, 'refinement.json')['rounds']
  assert [e['round'] for e in state] == [0, 1]
  current = np.arange(50)
  for e in state:
    kept, dropped = np.asarray(e['kept']), np.asarray(e['dropped_indices'])
    assert e['train_size'] == len(current) and len(dropped) == int(np.floor(0.1 * len(current) + 0.5))
    np.testing.assert_array_equal(np.sort(np.concatenate([kept, dropped])), current)   # a partition
    assert not set(kept.tolist()) & set(dropped.tolist())
    hit = int(truth[dropped].sum())
    assert e['dropped_true_anomalies'] == hit
    assert e['precision'] == pytest.approx(hit / len(dropped))
    in_set = int(truth[current].sum())
    assert e['recall'] == (pytest.approx(hit / in_set) if in_set else None)
    current = kept
  # the final model trained on the kept set: results.json has the rounds (without the index lists)
  out = _read(wd, 'results.json')
  assert out['refinement']['final_train_size'] == len(current) == 50 - 5 - 5
  assert [r['dropped'] for r in out['refinement']['rounds']] == [5, 5]
  assert 'kept' not in out['refinement']['rounds'][0]
  assert out['pollution']['num_anomalies'] == 5 and out['pollution']['ratio'] == 0.1
  assert res['image_auc'] == out['image_auc']


def test_rerun_resumes_without_retraining_finished_rounds(refined, make_config, monkeypatch):
  cfg, wd, _ = refined
  before = _read(wd, 'refinement.json')
  def no_training(*a, **k):
    raise AssertionError('a finished round was retrained')
  monkeypatch.setattr(multirun, 'train_stacked', no_training)
  res = refine_run.train_and_evaluate(cfg, wd)
  assert _read(wd, 'refinement.json') == before
  assert res['refinement']['final_train_size'] == 40
  # other settings in the same workdir: a one-line error, nothing overwritten
  with pytest.raises(ValueError, match=r"refine.drop '0.1' -> '0.2'"):
    refine_run.train_and_evaluate(_config(make_config, **{'refine.drop': '0.2'}), wd)
  # the anomaly generation is part of what a finished round depends on
  with pytest.raises(ValueError, match="noise_mode"):
    refine_run.train_and_evaluate(_config(make_config, **{'data.noise_mode': 'cutpaste'}), wd)
  assert _read(wd, 'refinement.json') == before


def test_same_seed_same_kept_set_other_seed_other_split(refined, tmp_path, make_config):
  cfg, wd, _ = refined
  first = _read(wd, 'refinement.json')['rounds']
  cfg2 = _config(make_config, **{'refine.rounds': 1})
  refine_run.train_and_evaluate(cfg2, str(tmp_path / 'again'))
  again = _read(str(tmp_path / 'again'), 'refinement.json')['rounds']
  assert again[0]['kept'] == first[0]['kept'] and again[0]['dropped_indices'] == first[0]['dropped_indices']


def test_settings_are_checked(make_config):
  with pytest.raises(config_checks.ConfigError, match='refine.subsets=1'):
    config_checks.check_refine(_config(make_config, **{'refine.subsets': 1}))
  with pytest.raises(config_checks.ConfigError, match="refine.drop='lots'"):
    config_checks.check_refine(_config(make_config, **{'refine.drop': 'lots'}))
  assert config_checks.check_refine(_config(make_config, **{'refine.drop': 'auto'})) == (2, 3, 'auto')
  assert config_checks.check_refine(make_config('test'))[0] == 0
  for kw, field in [({'data.online_supervision': False}, 'online_supervision'),
                    ({'data.supervise_mode': 'other'}, "supervise_mode='other'"), ({'runs': '0x0-1'}, 'config.runs')]:
    with pytest.raises(config_checks.ConfigError, match=field):   # (was a plain ValueError of refine_run)
      config_checks.check_config(_config(make_config, **kw))
  k = refine_run.model_keys(0, 1, 3)
  flat = [np.asarray(x).tobytes() for pair in k for x in pair]
  assert len(set(flat)) == 6


def _no_training(monkeypatch):
  def no_training(*a, **k):
    raise AssertionError('a round was trained')
  monkeypatch.setattr(multirun, 'train_stacked', no_training)
  monkeypatch.setattr(input_pipeline, 'load_source', no_training)


def test_a_second_refinement_on_a_workdir_in_use_is_refused_before_round_one(make_config, tmp_path, monkeypatch):
  """Issue 28 item 5: the refinement takes the workdir lock before training round 1; a second run on the same
  workdir (here held by another process) is refused at once, without loading data or training."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from fcdd_jax.utils import workdir  # pylint: disable=g-import-not-at-top
  from tests.paths import ROOT  # pylint: disable=g-import-not-at-top
  wd = str(tmp_path / 'w')
  os.makedirs(wd)
  code = (f'import time; from fcdd_jax.utils import workdir_lock; workdir_lock.Lock.acquire({wd!r}); '
          'print("locked", flush=True); time.sleep(60)')
  holder = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    _no_training(monkeypatch)
    with pytest.raises(workdir.WorkdirError, match=f'in use by another fcdd_jax run .*pid {holder.pid}'):
      refine_run.train_and_evaluate(_config(make_config, **{'refine.rounds': 1}), wd)
  finally:
    holder.kill()
    holder.wait()
  assert not os.path.exists(os.path.join(wd, 'refinement.json'))


def test_a_workdir_that_cannot_be_used_fails_before_round_one(make_config, tmp_path, monkeypatch):
  from fcdd_jax.utils import workdir  # pylint: disable=g-import-not-at-top
  f = tmp_path / 'file'
  f.write_text('x')
  _no_training(monkeypatch)
  with pytest.raises(workdir.WorkdirError, match='is an existing file'):
    refine_run.train_and_evaluate(_config(make_config, **{'refine.rounds': 1}), str(f))
  from tests import support  # pylint: disable=g-import-not-at-top
  with support.read_only_dir(tmp_path / 'ro') as ro:
    with pytest.raises(workdir.WorkdirAccessError, match='cannot create the workdir'):
      refine_run.train_and_evaluate(_config(make_config, **{'refine.rounds': 1}), os.path.join(ro, 'w'))

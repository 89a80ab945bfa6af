"""run: the compute dtype a config resolves to, and that it is the compute dtype only (a run resumes in the
other one)."""
import json
import os

import jax.numpy as jnp
import pytest

from fcdd_jax.utils import checkpointing
from fcdd_jax.pipeline import config_checks
from fcdd_jax.pipeline import run
from fcdd_jax.pipeline import train


@pytest.mark.parametrize('name, backend, want', [
    ('FCDD_CNN224_VGG_NOPT', 'cpu', 'bfloat16'), ('FCDD_CNN224_VGG_F', 'cpu', 'bfloat16'),
    ('FCDD_CNN224', 'cpu', 'bfloat16'), ('FCDD_CNN28_W', 'cpu', 'float32'), ('FCDD_CNN32_LW3K', 'cpu', 'float32'),
    ('FCDD_CNN224_VGG_NOPT', 'gpu', 'float32'), ('FCDD_CNN224_VGG_NOPT', 'tpu', 'float32')])
def test_auto_is_bfloat16_for_224_nets_on_the_cpu_only(make_config, name, backend, want):
  cfg = make_config('test', **{'model.name': name, 'model.dtype': 'auto'})
  assert run.compute_dtype(cfg, backend) == want
  for explicit in ('float32', 'bfloat16'):   # an explicit dtype is kept on every backend
    cfg = make_config('test', **{'model.name': name, 'model.dtype': explicit})
    assert run.compute_dtype(cfg, backend) == explicit


def test_model_options_and_config_check_take_the_resolved_dtype(make_config):
  cfg = make_config('test', **{'model.name': 'FCDD_CNN224_VGG_NOPT', 'model.dtype': 'auto'})
  assert run.model_options(cfg)['dtype'] == jnp.bfloat16   # the tests run on the CPU backend
  cfg = make_config('test', **{'model.dtype': 'float16'})
  with pytest.raises(config_checks.ConfigError, match="config.model.dtype='float16'; allowed: auto, float32"):
    config_checks.check_config(cfg)


def test_config_check_names_a_bad_image_score(make_config):
  for bad in ('median', 'top0%'):
    with pytest.raises(config_checks.ConfigError, match=f"config.eval.image_score='{bad}'; allowed: mean, max"):
      config_checks.check_config(make_config('test', **{'eval.image_score': bad}))
  with pytest.raises(config_checks.ConfigError, match="image_score='max' pools an FCDD heatmap; CNN32"):
    config_checks.check_config(make_config('test', **{'eval.image_score': 'max', 'model.name': 'CNN32'}))
  config_checks.check_config(make_config('test', **{'eval.image_score': 'top2.5%'}))


def test_a_run_resumes_in_the_other_compute_dtype(make_config, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'w')
  monkeypatch.setattr(checkpointing, 'reached_preemption', lambda step: step == 2)
  with pytest.raises(SystemExit):
    train.train_and_evaluate(make_config('test', **{'model.dtype': 'float32'}), workdir)
  monkeypatch.setattr(checkpointing, 'reached_preemption', lambda step: False)
  results = train.train_and_evaluate(make_config('test', **{'model.dtype': 'bfloat16'}), workdir)
  assert results['dtype'] == 'bfloat16' and results['steps'] == 6
  with open(os.path.join(workdir, 'config_changes.json')) as f:
    changes = json.load(f)
  assert 'model.dtype' in json.dumps(changes) and 'bfloat16' in json.dumps(changes)

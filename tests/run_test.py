"""run: the compute dtype a config resolves to, and that it is the compute dtype only (a run resumes in the
other one)."""
import json
import os

import jax.numpy as jnp
import pytest

from fcdd_jax.models.cpu import onednn
from fcdd_jax.utils import checkpointing
from fcdd_jax.pipeline import config_checks
from fcdd_jax.pipeline import run
from fcdd_jax.pipeline import train


@pytest.mark.parametrize('bf16_cpu', [True, False])
@pytest.mark.parametrize('name, backend, want', [
    ('FCDD_CNN224_VGG_NOPT', 'cpu', 'bfloat16'), ('FCDD_CNN224_VGG_F', 'cpu', 'bfloat16'),
    ('FCDD_CNN224', 'cpu', 'bfloat16'), ('FCDD_CNN28_W', 'cpu', 'float32'), ('FCDD_CNN32_LW3K', 'cpu', 'float32'),
    ('FCDD_CNN224_VGG_NOPT', 'gpu', 'float32'), ('FCDD_CNN224_VGG_NOPT', 'tpu', 'float32')])
def test_auto_is_bfloat16_for_224_nets_on_a_cpu_with_bf16_arithmetic_only(make_config, monkeypatch, name, backend,
                                                                          want, bf16_cpu):
  """With the XLA convolutions only the 224² nets take bfloat16, on a CPU with bf16 arithmetic only: elsewhere it
  is emulated, slower than float32 (and oneDNN has no bf16 convolutions without AVX-512: a bf16 net crashed)."""
  monkeypatch.setattr(onednn, 'conv_impl', lambda backend=None: 'xla')
  monkeypatch.setattr(onednn, 'native_bf16', lambda flags=None: bf16_cpu)
  cfg = make_config('test', **{'model.name': name, 'model.dtype': 'auto'})
  assert run.compute_dtype(cfg, backend) == (want if bf16_cpu else 'float32')
  for explicit in ('float32', 'bfloat16'):   # an explicit dtype is kept on every backend
    cfg = make_config('test', **{'model.name': name, 'model.dtype': explicit})
    assert run.compute_dtype(cfg, backend) == explicit


@pytest.mark.parametrize('impl, bf16_cpu, want', [
    ('onednn', True, 'bfloat16'), ('onednn', False, 'float32'), ('xla', True, 'float32'), ('xla', False, 'float32')])
@pytest.mark.parametrize('name', ['FCDD_CNN28_W', 'FCDD_CNN32_LW3K', 'FCDD_CNN32_S'])
def test_auto_is_bfloat16_for_small_nets_on_onednn_with_bf16_arithmetic(make_config, monkeypatch, name, impl,
                                                                        bf16_cpu, want):
  """The small nets take bfloat16 where the convolutions run on oneDNN and the CPU has AVX512-BF16 or AMX (there
  oneDNN's bf16 convolutions are twice its float32 ones), on the CPU backend only."""
  monkeypatch.setattr(onednn, 'conv_impl', lambda backend=None: impl)
  monkeypatch.setattr(onednn, 'native_bf16', lambda flags=None: bf16_cpu)
  cfg = make_config('test', **{'model.name': name, 'model.dtype': 'auto'})
  assert run.compute_dtype(cfg, 'cpu') == want
  assert run.compute_dtype(cfg, 'gpu') == 'float32'
  assert run.compute_dtype(make_config('test', **{'model.name': name, 'model.dtype': 'float32'}), 'cpu') == 'float32'


@pytest.mark.parametrize('name', ['CNN28_W', 'CNN32_LW3K', 'AE28', 'AE32_LW3K'])
def test_auto_keeps_the_small_baselines_in_float32(make_config, monkeypatch, name):
  """The small baseline classifiers and autoencoders stay float32 on oneDNN with bf16 arithmetic (bfloat16's
  detection was checked on the FCDD nets only)."""
  monkeypatch.setattr(onednn, 'conv_impl', lambda backend=None: 'onednn')
  monkeypatch.setattr(onednn, 'native_bf16', lambda flags=None: True)
  assert run.compute_dtype(make_config('test', **{'model.name': name, 'model.dtype': 'auto'}), 'cpu') == 'float32'


def test_native_bf16_reads_the_cpu_flags(tmp_path):
  def cpuinfo(flags):
    p = tmp_path / f'cpuinfo-{len(list(tmp_path.iterdir()))}'   # one file per case: cpu_flags reads a path once
    p.write_text(f'processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\nbugs\t\t: none\n\n'
                 f'processor\t: 1\nflags\t\t: {flags}\n')
    return onednn.cpu_flags(str(p))
  assert onednn.native_bf16(cpuinfo('fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni'))
  assert onednn.native_bf16(cpuinfo('fpu avx512f amx_bf16 amx_tile'))
  assert not onednn.native_bf16(cpuinfo('fpu sse2 avx2 avx512f avx512_vnni avx512_fp16'))
  assert onednn.cpu_flags(str(tmp_path / 'missing')) == set() and not onednn.native_bf16(set())


def test_model_options_and_config_check_take_the_resolved_dtype(make_config, monkeypatch):
  monkeypatch.setattr(onednn, 'native_bf16', lambda flags=None: True)
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


@pytest.mark.parametrize('opt', ['sgd', 'adam'])
def test_head_lr_mult_scales_only_the_last_conv_and_frozen_params_stay(make_config, opt):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  params = {'features': {'features_0': {'kernel': np.ones((3, 3, 1, 2), np.float32)},
                         'features_4': {'kernel': np.ones((3, 3, 2, 2), np.float32)}},
            'final': {'kernel': np.ones((1, 1, 2, 1), np.float32), 'bias': np.ones((1,), np.float32)}}
  grads = jax.tree.map(lambda p: np.full_like(p, 0.5), params)
  frozen = {'features': {'features_0': {'kernel': True}, 'features_4': {'kernel': False}},
            'final': {'kernel': False, 'bias': False}}
  ups = {}
  for mult in (1.0, 7.5):
    cfg = make_config('test', **{'optim.name': opt, 'optim.head_lr_mult': mult, 'optim.weight_decay': 0.0})
    tx = run.create_optimizer(cfg, 4, frozen)
    ups[mult], _ = tx.update(grads, tx.init(params), params)
  for mult in (1.0, 7.5):
    np.testing.assert_array_equal(ups[mult]['features']['features_0']['kernel'], 0)   # frozen
    np.testing.assert_allclose(ups[mult]['features']['features_4']['kernel'],
                               ups[1.0]['features']['features_4']['kernel'])        # the body as before
  body = float(np.asarray(ups[1.0]['features']['features_4']['kernel']).flat[0])
  assert body < 0
  for k in ('kernel', 'bias'):
    np.testing.assert_allclose(ups[1.0]['final'][k], body, rtol=1e-6)
    np.testing.assert_allclose(ups[7.5]['final'][k], 7.5 * body, rtol=1e-6)   # the head steps 7.5x as far
  with pytest.raises(config_checks.ConfigError, match='optim.head_lr_mult=0.0: expected a number > 0'):
    config_checks.check_config(make_config('test', **{'optim.head_lr_mult': 0.0}))


def test_head_lr_mult_1_keeps_the_optimiser_state_of_earlier_runs(make_config):
  """Checkpoints written before optim.head_lr_mult existed hold multi_transform({'train', 'frozen'}) state for
  nets with frozen layers (FCDD_CNN224_VGG_F): with the default they must restore into the same tree."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  params = {'features': {'features_0': {'kernel': np.ones((3, 3, 1, 2), np.float32)}},
            'final': {'kernel': np.ones((1, 1, 2, 1), np.float32)}}
  frozen = {'features': {'features_0': {'kernel': True}}, 'final': {'kernel': False}}
  cfg = make_config('test', **{'optim.name': 'sgd', 'optim.weight_decay': 1e-6})
  before = optax.multi_transform(
      {'train': optax.chain(optax.add_decayed_weights(1e-6),
                            optax.sgd(run.learning_rate_fn(cfg, 4), momentum=0.9, nesterov=True)),
       'frozen': optax.set_to_zero()}, {'features': {'features_0': {'kernel': 'frozen'}}, 'final': {'kernel': 'train'}})
  want = jax.tree_util.tree_structure(before.init(params))
  assert jax.tree_util.tree_structure(run.create_optimizer(cfg, 4, frozen).init(params)) == want
  cfg.optim.head_lr_mult = 3.0
  assert jax.tree_util.tree_structure(run.create_optimizer(cfg, 4, frozen).init(params)) != want

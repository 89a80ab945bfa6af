"""End-to-end engine tests on the embedded demo data with 8 simulated CPU devices."""
import json
import os

import flax.linen as nn
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from sklearn import metrics

from fcdd_jax.utils import checkpointing
from fcdd_jax.pipeline import config_checks
from fcdd_jax.models import layers
from fcdd_jax.evaluation import results as results_lib
from fcdd_jax.pipeline import run
from fcdd_jax.pipeline import steps
from fcdd_jax.pipeline import train
from fcdd_jax.pipeline import train_log
from tests import support


def _final_params(workdir):
  mngr = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'), item_names=('state', 'meta'))
  step = mngr.latest_step()
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                        meta=ocp.args.JsonRestore()))
  mngr.close()
  return step, restored['state'], restored['meta']


@pytest.fixture(scope='module')
def full_run(make_config, tmp_path_factory):
  """The test config (6 steps on the demo data) on 2 devices: (workdir, results, gathered test outputs)."""
  assert jax.device_count() == 2
  workdir = str(tmp_path_factory.mktemp('full'))
  seen = {}
  original = results_lib.compute_metrics
  def spy(config, pipeline, outputs):
    seen.update(outputs)
    return original(config, pipeline, outputs)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(results_lib, 'compute_metrics', spy)
    results = train.train_and_evaluate(make_config(), workdir)
  return workdir, results, seen


def test_end_to_end_outputs(full_run):
  """Files, history and checkpoint of a run; its AUCs: sklearn's on its outputs, and learned (an untrained
  net: pixel AUC 0.75 on this data; 6 steps: 0.97)."""
  workdir, results, outputs = full_run
  for name in ('config.json', 'results.json', 'history.json', 'test_samples.png'):
    assert os.path.exists(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, 'results.json')) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(results))
  assert saved['image_auc'] == pytest.approx(metrics.roc_auc_score(outputs['label'], outputs['score']), abs=1e-9)
  assert saved['image_auc'] >= 0.85 and saved['pixel_auc'] >= 0.9
  assert saved['runs'][0]['normal_class'] == 0 and saved['runs'][0]['seed'] == 0
  with open(os.path.join(workdir, 'history.json')) as f:
    hist = json.load(f)
  assert [h['step'] for h in hist] == [2, 4, 6]
  for h in hist:
    for k in ('loss', 'loss_nominal', 'loss_anomalous', 'l2_grads', 'l2_params', 'learning_rate'):
      assert np.isfinite(h[k]), k
  step, _, meta = _final_params(workdir)
  assert step == 6 and meta['finished'] is True
  # TensorBoard's summaries, read back by TensorBoard's own reader: the logged means and the final AUCs
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  (events,) = [f for f in os.listdir(workdir) if f.startswith('events.out.tfevents')]
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, events))
  acc.Reload()
  assert [(s.step, s.value) for s in acc.Scalars('train/loss')] == [
      (h['step'], pytest.approx(h['loss'], rel=1e-6)) for h in hist]
  assert [(s.step, s.value) for s in acc.Scalars('eval/image_auc')] == [(6, pytest.approx(saved['image_auc']))]
  assert '_hparams_/session_start_info' in acc.PluginTagToContent('hparams')


def test_rerun_of_finished_run_only_evaluates(make_config, full_run, capsys):
  workdir, results, _ = full_run
  again = train.train_and_evaluate(make_config(), workdir)
  out = capsys.readouterr().out
  assert 'evaluating only' in out
  assert again['image_auc'] == pytest.approx(results['image_auc'], abs=1e-6)


def test_interrupted_and_resumed_run_is_bit_identical(make_config, full_run, tmp_path, monkeypatch):
  workdir_full, results_full, _ = full_run
  workdir = str(tmp_path / 'resumed')
  monkeypatch.setattr(checkpointing, 'reached_preemption', lambda step: step == 4)
  with pytest.raises(SystemExit):
    train.train_and_evaluate(make_config(), workdir)
  step, _, meta = _final_params(workdir)
  assert step == 4 and meta['finished'] is False
  monkeypatch.setattr(checkpointing, 'reached_preemption', lambda step: False)
  results = train.train_and_evaluate(make_config(), workdir)
  _, state_a, _ = _final_params(workdir_full)
  _, state_b, _ = _final_params(workdir)
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert results['image_auc'] == results_full['image_auc']
  assert results['pixel_auc'] == results_full['pixel_auc']


def test_nan_loss_stops_before_saving(make_config, tmp_path):
  workdir = str(tmp_path / 'nan')
  with pytest.raises(train_log.NonFiniteError, match='non-finite'):
    train.train_and_evaluate(make_config(**{'optim.lr': float('nan'), 'checkpoint_every_steps': 2}), workdir)
  ckdir = os.path.join(workdir, 'checkpoints')
  assert not os.path.isdir(ckdir) or not [d for d in os.listdir(ckdir) if d.isdigit()]


def test_damaged_latest_checkpoint_falls_back_to_previous(tmp_path):
  ck = checkpointing.Checkpointer(str(tmp_path / 'ck'), max_to_keep=3, asynchronous=False)
  tree = {'w': np.arange(4, dtype=np.float32)}
  ck.save(1, tree, {'step': 1})
  ck.save(2, {'w': tree['w'] + 1}, {'step': 2})
  ck.wait()
  # Damage step 2: delete its array data.
  step_dir = tmp_path / 'ck' / '2' / 'state'
  for root, _, files in os.walk(step_dir):
    for f in files:
      if not f.endswith('_METADATA'):
        os.remove(os.path.join(root, f))
  restored, meta, step = ck.restore_latest(tree)
  assert step == 1 and meta['step'] == 1
  np.testing.assert_array_equal(np.asarray(restored['w']), tree['w'])
  # A half-written save (orbax temp dir) is ignored.
  os.makedirs(tmp_path / 'ck' / '3.orbax-checkpoint-tmp-123' / 'state')
  ck2 = checkpointing.Checkpointer(str(tmp_path / 'ck'), max_to_keep=3, asynchronous=False)
  assert 3 not in ck2.all_steps()
  ck.close()
  ck2.close()


@pytest.mark.parametrize('overrides,match', [
    ({'model.name': 'FCDD_NOPE'}, "model.name='FCDD_NOPE' is unknown; known nets: .*FCDD_CNN28_W"),
    ({'batch_size': 13}, 'batch_size=13 is not divisible by the 2 devices'),
    ({'model.name': 'FCDD_CNN224_VGG_F'}, 'pretrained_path is empty.*FCDD_CNN224_VGG_NOPT'),
    ({'optim.name': 'rmsprop'}, "optim.name='rmsprop' is unknown; allowed: sgd, adam"),
    ({'objective': 'ae'}, "objective='ae' does not fit net"),
])
def test_config_errors_name_value_and_allowed(make_config, overrides, match):
  with pytest.raises(config_checks.ConfigError, match=match):
    config_checks.check_config(make_config(**overrides))


def test_image_size_that_does_not_fit_the_net(make_config, tmp_path):
  with pytest.raises(config_checks.ConfigError, match=r'32x32 but net .FCDD_CNN28_W. takes 28x28'):
    train.train_and_evaluate(make_config(**{'model.name': 'FCDD_CNN28_W'}), str(tmp_path))


def test_learning_rate_schedules_are_per_epoch(make_config):
  c = make_config(**{'optim.schedule': 'lambda', 'optim.lr': 0.1, 'optim.gamma': 0.5})
  fn = run.learning_rate_fn(c, steps_per_epoch=4)
  np.testing.assert_allclose([float(fn(np.int32(s))) for s in (0, 3, 4, 8)], [0.1, 0.1, 0.05, 0.025],
                             rtol=1e-6)
  c = make_config(**{'optim.schedule': 'milestones', 'optim.lr': 1.0, 'optim.milestones': (1, 2),
                 'optim.milestone_factor': 0.1})
  fn = run.learning_rate_fn(c, steps_per_epoch=2)
  np.testing.assert_allclose([float(fn(np.int32(s))) for s in (0, 1, 2, 4)], [1, 1, 0.1, 0.01], rtol=1e-6)


def test_other_device_count_gives_the_same_aucs(full_run, tmp_path):
  """The global stream and the metrics do not depend on the number of devices (here 8 vs 2: a device holds 2
  of the 16 rows). The command on the demo data never imports TensorFlow (its import alone: seconds and hundreds
  of MB; utils/summaries.py)."""
  _, results2, _ = full_run
  proc = support.run_cli(['--config', 'configs/test.py', '--workdir', str(tmp_path)], devices=8,
                         env={'PYTHONPROFILEIMPORTTIME': '1', 'FCDD_DEBUG': '1'})
  # (FCDD_DEBUG=1: utils/tf_setup leaves stderr open, so an import of TensorFlow could not hide its lines)
  assert proc.returncode == 0, proc.stderr[-3000:]
  imported = [l.rsplit('|', 1)[-1].strip() for l in proc.stderr.splitlines() if l.startswith('import time:')]
  assert 'jax' in imported and 'tensorflow' not in imported
  with open(tmp_path / 'results.json') as f:
    results8 = json.load(f)
  assert results8['image_auc'] == pytest.approx(results2['image_auc'], abs=1e-4)
  assert results8['pixel_auc'] == pytest.approx(results2['pixel_auc'], abs=1e-4)


def test_training_set_smaller_than_the_batch(make_config, tmp_path):
  """40 images at batch 64: one padded step per epoch (the reference keeps the partial batch, spec §11.11)."""
  res = train.train_and_evaluate(make_config(**{'batch_size': 64, 'data.demo_num_train': 40, 'num_train_steps': 2}),
                                 str(tmp_path))
  assert res['steps'] == 2
  assert res['image_auc'] >= 0.8


@pytest.mark.parametrize('net,extra', [('CNN32', {'loss.blur_heatmaps': True}),
                                       ('AE32', {'data.supervise_mode': 'unsupervised'})])
def test_baselines_train_and_evaluate_end_to_end(make_config, net, extra, tmp_path):
  """HSC (gradient heatmaps, optional blur) and AE baselines through the same engine (spec §10.6)."""
  res = train.train_and_evaluate(make_config(**{'model.name': net, 'num_train_steps': 2, **extra}), str(tmp_path))
  assert res['image_auc'] >= 0.8 and res['pixel_auc'] >= 0.8   # CNN32+blur: 0.93 / 0.89, AE32: 1.0 / 1.0
  assert os.path.exists(os.path.join(str(tmp_path), 'heatmaps_global.png'))


def test_padded_last_batch_is_compiled_before_the_first_step(make_config, tmp_path, monkeypatch):
  """40 images at batch 16: steps 1-2 full, step 3 padded (`valid`). Both programs are traced before the first
  step is timed, so no compilation falls into the training rate or ETA."""
  traces, at_step = [], []
  original_step = steps.train_step
  def counting_step(*args, **kwargs):
    traces.append(1)
    return original_step(*args, **kwargs)
  original_add = train_log.TrainLog.add
  def recording_add(self, step, metrics):
    at_step.append((step, len(traces)))
    return original_add(self, step, metrics)
  monkeypatch.setattr(steps, 'train_step', counting_step)
  monkeypatch.setattr(train_log.TrainLog, 'add', recording_add)
  res = train.train_and_evaluate(make_config(**{'data.demo_num_train': 40, 'num_train_steps': 6}), str(tmp_path))
  assert res['steps'] == 6
  assert [s for s, _ in at_step] == [1, 2, 3, 4, 5, 6]
  assert {n for _, n in at_step} == {2}      # unpadded + padded program, both before step 1 ends


class _BNNet(nn.Module):
  """x -> BatchNorm: its batch statistics are those of the input."""
  frozen: bool = False

  @nn.compact
  def __call__(self, x, train=False, mask=None):
    return layers.BatchNorm(use_running=self.frozen)(x, train, mask=mask)


@pytest.mark.parametrize('frozen', [False, True])
def test_bn_stats_step_against_numpy(frozen):
  """The batch's mean and unbiased variance over real rows, whatever the running statistics held before; a
  BatchNorm that never updates (frozen) keeps them."""
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, (6, 3, 4, 2)).astype(np.float32)
  valid = np.array([1, 1, 1, 1, 0, 0], np.float32)
  x[4:] = 100.0                                                      # padding rows must not count
  net = _BNNet(frozen)
  variables = net.init(jax.random.PRNGKey(0), x)
  old = {'BatchNorm_0': {'mean': np.float32([0.5, -1.0]), 'var': np.float32([2.0, 0.25])}}
  state = run.TrainState.create(apply_fn=net.apply, params=variables['params'], tx=optax.sgd(0.1),
                                batch_stats=old)
  stats, rows = jax.jit(steps.bn_stats_step)(state, {'image': x, 'valid': valid})
  assert float(rows) == 4.0
  real = x[:4].reshape(-1, 2).astype(np.float64)
  want_mean, want_var = (old['BatchNorm_0']['mean'], old['BatchNorm_0']['var']) if frozen else (
      real.mean(0), real.var(0, ddof=1))
  np.testing.assert_allclose(stats['BatchNorm_0']['mean'], want_mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stats['BatchNorm_0']['var'], want_var, rtol=1e-5, atol=1e-5)


def test_precise_bn_run_saves_the_final_nets_training_statistics(make_config, tmp_path):
  """model.precise_bn on 2 devices: the final checkpoint holds, per BatchNorm, the row-weighted mean over the
  training split's evaluation batches of the batch statistics of the final parameters (computed here through
  flax directly: zero running statistics, one momentum-0.1 update, divided by 0.1), and the evaluation used
  them (results.json = AUC of the scores of that state)."""
  from fcdd_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  config = make_config('test', **{'model.precise_bn': True, 'eval.train_heatmaps': False})
  workdir = str(tmp_path / 'pbn')
  res = train.train_and_evaluate(config, workdir)
  step, state, meta = _final_params(workdir)
  assert step == 6 and meta['finished']
  pipe = input_pipeline.create(config)
  net = run.create_model(config, pipe.info)
  zero = jax.tree.map(np.zeros_like, state['batch_stats'])
  fwd = jax.jit(lambda v, x, m: net.apply(v, x, train=True, mutable=['batch_stats'], mask=m)[1]['batch_stats'])
  total, rows = None, 0.0
  for b in pipe.eval_batches('train', min(config.batch_size, 8 * jax.device_count())):
    st = fwd({'params': state['params'], 'batch_stats': zero}, b['image'], b['valid'])
    n = float(b['valid'].sum())
    st = jax.tree.map(lambda s: np.asarray(s, np.float64) / 0.1 * n, st)
    total = st if total is None else jax.tree.map(np.add, total, st)
    rows += n
  assert rows == config.data.demo_num_train
  want = jax.tree.map(lambda t: t / rows, total)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(np.asarray(g), w, rtol=2e-4, atol=1e-5),
               state['batch_stats'], want)
  scores, labels = [], []
  variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
  for b in pipe.eval_batches('test'):
    phi = np.asarray(jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, b['image']), np.float64)
    keep = b['valid'] > 0
    scores += list((np.sqrt(phi ** 2 + 1) - 1).mean(axis=(1, 2, 3))[keep])
    labels += list(b['label'][keep])
  assert res['image_auc'] == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-6)


def test_check_finite_names_the_models_of_many_runs():
  """Many runs (`multirun`) go through the same TrainLog checks: [M] metrics, the failing models named."""
  train_log.check_finite({'loss': np.float32(1.0), 'l2_grads': np.float32(2.0)}, 3, 'log step')
  train_log.check_finite({'loss': np.ones(2)}, 3, 'log step', ['a', 'b'])
  with pytest.raises(train_log.NonFiniteError, match=r"non-finite loss, l2_grads in \['b'\] at step 3 \(log step\)"):
    train_log.check_finite({'loss': np.array([1.0, np.nan]), 'l2_grads': np.array([1.0, np.inf])}, 3, 'log step',
                           ['a', 'b'])
  with pytest.raises(train_log.NonFiniteError, match=r'non-finite loss=nan at step 4 \(before saving\)'):
    train_log.check_finite({'loss': np.float32('nan')}, 4, 'before saving')


def test_precise_bn_on_the_training_stream_averages_one_epoch_of_training_batches(make_config):
  """model.precise_bn_data=stream: the statistics are the row-weighted mean, over the first epoch of the
  training stream (augmented, with its generated anomalies; the padded last batch's padding rows excluded),
  of the batch statistics of the given parameters (computed here through flax directly, as above)."""
  import itertools  # pylint: disable=g-import-not-at-top
  from fcdd_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  config = make_config('test', **{'model.precise_bn': True, 'model.precise_bn_data': 'stream'})
  pipe = input_pipeline.create(config)
  built = run.build_run(config, pipe.info, pipe.info.steps_per_epoch)
  state = built.init_state(jax.random.PRNGKey(3))
  got = steps.precise_bn(config, state, pipe, built).batch_stats
  net = run.create_model(config, pipe.info)
  zero = jax.tree.map(np.zeros_like, state.batch_stats)
  fwd = jax.jit(lambda v, x, m: net.apply(v, x, train=True, mutable=['batch_stats'], mask=m)[1]['batch_stats'])
  total, rows, labels = None, 0.0, []
  for b in itertools.islice(pipe.train_batches(0), pipe.info.steps_per_epoch):
    valid = b.get('valid', np.ones(len(b['image']), np.float32))
    st = fwd({'params': state.params, 'batch_stats': zero}, b['image'], valid)
    n = float(valid.sum())
    st = jax.tree.map(lambda s: np.asarray(s, np.float64) / 0.1 * n, st)
    total = st if total is None else jax.tree.map(np.add, total, st)
    rows += n
    labels += list(b['label'][valid > 0])
  assert rows == config.data.demo_num_train and 0 < np.mean(labels) < 1   # one epoch, anomalies included
  want = jax.tree.map(lambda t: t / rows, total)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(np.asarray(g), w, rtol=2e-4, atol=1e-5), got, want)
  images = steps.precise_bn(_with(config, 'images'), state, pipe, built).batch_stats
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(images), jax.tree.leaves(got)))


def _with(config, data):
  c = config.copy_and_resolve_references()
  c.model.precise_bn_data = data
  return c


def test_precise_bn_data_is_checked():
  from fcdd_jax.configs import custom  # pylint: disable=g-import-not-at-top
  c = custom.get_config()
  c.model.precise_bn_data = 'nominal'
  with pytest.raises(config_checks.ConfigError, match=r"config.model.precise_bn_data='nominal'; allowed: images, stream"):
    config_checks.check_config(c)

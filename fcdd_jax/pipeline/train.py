"""One run: `train_and_evaluate`, a run with all its side effects (the programs it compiles are `steps`'s, its
evaluation and files `evaluate`'s, shared with the other drivers).

One call of `train_and_evaluate` = one run (one nominal class, one seed), as a short sequence of phases:
setup (checks, workdir lock, data, run builder, compiled steps), restore (newest checkpoint), loop (train,
log, checkpoint, preemption), evaluate (test outputs, AUCs, thresholds) and write (results, figures). Steps
are compiled once with `jax.jit` over a `Mesh(('data',))` (`run.build_run`): parameters replicated, batches
sharded along 'data'. The same code runs on 1 CPU, N GPUs or a multi-host TPU pod.
"""
import dataclasses
import os
import time
from typing import Any

from absl import logging
import jax
import ml_collections

from fcdd_jax import input_pipeline
from fcdd_jax.evaluation import results as results_lib
from fcdd_jax.pipeline import config_checks
from fcdd_jax.pipeline import evaluate as evaluate_lib
from fcdd_jax.pipeline import run as run_lib
from fcdd_jax.pipeline import steps
from fcdd_jax.pipeline import train_log
from fcdd_jax.utils import checkpointing
from fcdd_jax.utils import progress
from fcdd_jax.utils import summaries
from fcdd_jax.utils import workdir as workdir_lib


def default_workdir(config_name):
  return os.path.join('runs', f'{config_name}-{time.strftime("%Y%m%d-%H%M%S")}')


# ----------------------------------------------------------------------------------------------------
# The run, phase by phase

@dataclasses.dataclass
class _Run:
  """What the phases share."""
  config: Any
  workdir: str
  is_main: bool
  pipeline: Any
  built: run_lib.Run
  total_steps: int
  ckpt: checkpointing.Checkpointer
  writer: Any
  train_fn: Any
  eval_fn: Any
  timings: dict


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, pipeline=None) -> dict:
  """Trains (or resumes) one run, evaluates it and writes everything into `workdir`. Returns results.
  `pipeline`: the run's data (default: `input_pipeline.create(config, ...)`), e.g. a reduced training set."""
  r = _setup(config, workdir, pipeline)
  state, start_step, finished = _restore(r)
  if not finished:
    state = _loop(r, state, start_step)
  r.timings['train_seconds'] = time.time() - r.timings.pop('t_start')
  r.timings['steps_run'] = 0 if finished else max(0, r.total_steps - start_step - 1)
  outputs, train_outputs, results = _evaluate(r, state)
  _write(r, results, outputs, train_outputs)
  r.writer.close()
  r.ckpt.close()
  return results


def _setup(config, workdir, pipeline=None):
  """Checks, workdir lock, data, the run builder and the compiled steps."""
  t_begin = time.time()
  config_checks.check_config(config)
  is_main = jax.process_index() == 0
  run_lock = workdir_lib.prepare(config, workdir, config_checks.check_resume, is_main=is_main)  # lock, config check, config.json
  if pipeline is None:
    pipeline = input_pipeline.create(config, process_index=jax.process_index(),
                                     process_count=jax.process_count())
  info = pipeline.info
  total_steps = config_checks.total_steps(config, info)
  built = run_lib.build_run(config, info, info.steps_per_epoch)
  if is_main:
    results_lib.write_json(workdir, 'preprocessing.json', getattr(info, 'preprocessing', None) or {})
    _print_setup(config, workdir, info, built.objective, total_steps)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), max_to_keep=config.keep_checkpoints,
                                    on_close=run_lock.release if run_lock else None)
  writer = summaries.SummaryWriter(workdir if is_main else None)
  return _Run(config, workdir, is_main, pipeline, built, total_steps, ckpt, writer, steps.compile_train(built),
              steps.compile_eval(built), {'t_begin': t_begin})


def _print_setup(config, workdir, info, objective, total_steps):
  n_proc, n_dev = jax.process_count(), jax.device_count()
  print(f'fcdd_jax: workdir {os.path.abspath(workdir)}', flush=True)
  cls = info.class_names[info.normal_class] if info.class_names else ''
  print(f'fcdd_jax: {info.name} class {info.normal_class} ({cls}), '
        f'{info.num_train} train / {info.num_test} test images {info.image_shape}, net {config.model.name}, '
        f'objective {objective}, {n_proc} process(es) x {jax.local_device_count()} device(s) '
        f'[{jax.devices()[0].device_kind}], global batch {config.batch_size} '
        f'(per process {config.batch_size // n_proc}, per device {config.batch_size // n_dev}), '
        f'{info.steps_per_epoch} steps/epoch, {total_steps} steps', flush=True)


def _restore(r):
  """Initial state, replaced by the newest readable checkpoint: (state, start step, training finished)."""
  init_rng, _ = jax.random.split(jax.random.PRNGKey(r.config.seed))
  state = r.built.init_state(init_rng)
  restored, _, start_step = r.ckpt.restore_latest(state)  # damaged steps -> checkpoints/damaged-<step>/
  start_step = int(start_step or 0)
  if start_step > r.total_steps:
    raise config_checks.ConfigError(
        f'the checkpoint in {r.workdir} is at step {start_step}, past the {r.total_steps} steps this '
        'configuration trains; raise num_train_steps/num_epochs, or use --restart or a new --workdir')
  finished = restored is not None and start_step == r.total_steps   # (num_train_steps may have been raised)
  if restored is not None:
    state = restored
    if r.is_main:
      print(f'fcdd_jax: resumed from checkpoint step {start_step}' +
            (' (training had finished: evaluating only)' if finished else ''), flush=True)
  if start_step == 0 and r.is_main:
    r.writer.write_hparams({k: v for k, v in workdir_lib.flatten(r.config.to_dict()).items()
                            if isinstance(v, (int, float, str, bool))})
    try:
      r.pipeline.write_preview(os.path.join(r.workdir, 'ds_preview.png'))
    except Exception as e:  # pylint: disable=broad-except  (a figure must never stop a run)
      logging.warning('could not write ds_preview.png: %s', e)
  r.timings['t_start'] = time.time()
  r.timings['load_seconds'] = round(r.timings['t_start'] - r.timings.pop('t_begin'), 2)
  return state, start_step, finished


def _loop(r, state, start_step):
  """Trains from `start_step` to the last step: logs, checkpoints, exits cleanly on preemption."""
  _, step_rng = jax.random.split(jax.random.PRNGKey(r.config.seed))
  batches = input_pipeline.start_global(r.pipeline, r.built.data_sharding, start_step)
  log = train_log.TrainLog(r.config, r.workdir, r.writer, r.pipeline.info.steps_per_epoch, r.total_steps,
                           start_step, r.timings, r.is_main)
  progress.say(f'compiling the train step and running step {start_step + 1} ...', r.is_main)
  padded_fn = _compile_padded_step(r, state, step_rng, start_step)

  def step_fn(state, batch, step):  # pylint: disable=unused-argument
    fn = padded_fn if padded_fn is not None and 'valid' in batch else r.train_fn
    return fn(state, batch, step_rng)

  def after_step(step, state, metrics):
    preempt = checkpointing.reached_preemption(step)
    if step == r.total_steps:
      t_bn = time.time()
      state = steps.precise_bn(r.config, state, r.pipeline, r.built, r.is_main)
      jax.block_until_ready(state.batch_stats)
      r.timings['precise_bn_seconds'] = round(time.time() - t_bn, 2) if r.config.model.precise_bn else None
    if step % r.config.checkpoint_every_steps == 0 or step == r.total_steps or preempt:
      train_log.check_finite(jax.device_get(metrics), step, 'before saving')
      r.ckpt.save(step, state, {'step': step, 'finished': step == r.total_steps,
                                'steps_per_epoch': r.pipeline.info.steps_per_epoch})
    if preempt:
      r.ckpt.close()
      print(f'fcdd_jax: preemption at step {step}: checkpoint written, exiting; rerun the same command '
            'to resume', flush=True)
      raise SystemExit(0)
    return state

  state = steps.run_steps(log, state, start_step, r.total_steps, batches, step_fn, after_step)
  r.ckpt.wait()
  return state


def _compile_padded_step(r, state, step_rng, start_step):
  """The train step for the padded last batch of an epoch, compiled ahead (None when no epoch has one).

  That batch carries `valid` (masked loss and BatchNorm statistics) and so is a second program; compiling it
  here, before the first step, keeps its compile time in the compile phase instead of in the training rate
  and ETA (one compile of VGG_NOPT costs as much as several steps on a CPU)."""
  info = r.pipeline.info
  spe = info.steps_per_epoch
  if info.num_train % r.config.batch_size == 0:
    return None
  last_of_epoch = (start_step // spe + 1) * spe - 1        # 0-based step of the next padded batch
  if last_of_epoch >= r.total_steps:                       # the run ends before it: nothing to compile
    return None
  local = r.pipeline.train_batch(last_of_epoch)
  example = input_pipeline.to_global(local, r.built.data_sharding)
  return r.train_fn.lower(state, example, step_rng).compile()


def _evaluate(r, state):
  """`evaluate` plus the run's phase timings."""
  t_eval = time.time()
  config = r.config
  outputs, train_outputs, results = evaluate_lib.evaluate(config, r.pipeline, state, r.eval_fn, r.built.data_sharding,
                                             r.is_main)
  t = r.timings
  loop_seconds = (t['train_seconds'] - t.get('compile_seconds', 0.0)
                  - (t.get('precise_bn_seconds') or 0.0))
  results.update({
      'load_seconds': t.get('load_seconds'),
      'compile_seconds': t.get('compile_seconds'),
      'precise_bn_seconds': t.get('precise_bn_seconds'),   # inside train_seconds, not in the img/s
      'train_seconds': round(t['train_seconds'], 2),
      'train_images_per_second': (round(t['steps_run'] * config.batch_size / loop_seconds, 3)
                                  if t['steps_run'] and loop_seconds > 0 else None),
      'eval_seconds': round(time.time() - t_eval, 2),
      'steps': int(r.total_steps),
      'dtype': run_lib.compute_dtype(config),
  })
  return outputs, train_outputs, results


def _write(r, results, outputs, train_outputs):
  """results.json (before figures: a figure problem never loses the numbers), reports, figures, a summary."""
  if not r.is_main:
    return
  scalars = {'eval/image_auc': results['image_auc'], 'eval/pixel_auc': results['pixel_auc']}
  r.writer.write_scalars(r.total_steps, {k: v for k, v in scalars.items() if v is not None})
  evaluate_lib.write_results(r.workdir, r.config, r.pipeline, results, outputs, train_outputs)
  fmt = lambda v: 'n/a' if v is None else f'{v:.4f}'
  t, ips = r.timings, results['train_images_per_second']
  ft = progress.fmt_time
  print(f'fcdd_jax: image AUC {fmt(results["image_auc"])}  pixel AUC {fmt(results["pixel_auc"])}  (load '
        f'{ft(t.get("load_seconds", 0))}, compile {ft(t.get("compile_seconds", 0))}, '
        f'train {ft(t["train_seconds"])}' + (f' at {ips:.2f} img/s' if ips else '') + f' ({results["dtype"]})' +
        f', eval {ft(results["eval_seconds"])}, figures {ft(results["figures_seconds"])}; peak memory '
        f'{results["peak_rss_bytes"] / 2**30:.2f} GiB); results in {os.path.join(r.workdir, "results.json")}',
        flush=True)

"""Training: the pure train/eval steps and `train_and_evaluate`, one run with all its side effects.

One call of `train_and_evaluate` = one run (one nominal class, one seed), as a short sequence of phases:
setup (checks, workdir lock, data, run builder, compiled steps), restore (newest checkpoint), loop (train,
log, checkpoint, preemption), evaluate (test outputs, AUCs, thresholds) and write (results, figures). Steps
are compiled once with `jax.jit` over a `Mesh(('data',))` (`run.build_run`): parameters replicated, batches
sharded along 'data'. The same code runs on 1 CPU, N GPUs or a multi-host TPU pod.
"""
import dataclasses
import functools
import itertools
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax

from fcdd_jax.utils import checkpointing
from fcdd_jax.pipeline import config_checks
from fcdd_jax import input_pipeline
from fcdd_jax.models import layers
from fcdd_jax.models import losses
from fcdd_jax.utils import memory
from fcdd_jax.utils import progress
from fcdd_jax.models import receptive
from fcdd_jax.evaluation import results as results_lib
from fcdd_jax.pipeline import run as run_lib
from fcdd_jax.pipeline import train_log
from fcdd_jax.utils import workdir as workdir_lib


# ----------------------------------------------------------------------------------------------------
# Steps (pure)

def _stop_frozen(params, frozen):
  if frozen is None:
    return params
  return jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)


def _objective_loss(cfg, out, batch):
  valid = batch.get('valid')
  if cfg.objective == 'fcdd':
    if cfg.gtmaps:
      return losses.fcdd_gt_loss(out, batch['gtmap'], cfg.reception, cfg.gauss_std, valid, stable=cfg.stable)
    return losses.fcdd_loss(out, batch['label'], valid, stable=cfg.stable,
                            single_label_parity=cfg.single_label_parity)
  if cfg.objective == 'hsc':
    return losses.hsc_loss(out, batch['label'], valid, stable=cfg.stable)
  return losses.ae_loss(out, batch['image'], valid)


def train_step(state, batch, rng, *, cfg, frozen=None):
  """One optimiser step. Returns (new_state, metrics) with scalar metrics (no host sync).

  A batch with `valid` (the padded last batch of an epoch) passes it to the net as the BatchNorm mask and
  to the loss: padding rows change neither the statistics nor the loss. Batches without it (all others)
  keep the unmasked program; `_loop` compiles the masked one ahead (`_compile_padded_step`)."""
  rng = jax.random.fold_in(rng, state.step)
  mask = {'mask': batch['valid']} if 'valid' in batch else {}

  def loss_fn(params):
    params = _stop_frozen(params, frozen)
    out, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=True,
        mutable=['batch_stats'], rngs={'dropout': rng}, **mask)
    res = _objective_loss(cfg, out, batch)
    return res['loss'], (res, updates)

  (loss, (res, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads, batch_stats=updates['batch_stats'])
  metrics = {
      'loss': loss,
      'loss_nominal': res.get('loss_nominal', jnp.float32(0)),
      'loss_anomalous': res.get('loss_anomalous', jnp.float32(0)),
      'l2_grads': optax.tree.norm(grads),
      'l2_params': optax.tree.norm(new_state.params),
  }
  return new_state, metrics


def eval_step(state, batch, *, cfg):
  """Per-example outputs: score [B], heatmap [B,H,W] (full resolution), label, valid, index."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  x = batch['image']
  out = {}
  if cfg.objective == 'fcdd':
    phi = state.apply_fn(variables, x, train=False)
    low = losses.fcdd_heatmaps(phi)
    out['heatmap'] = receptive.upsample(low, cfg.reception, cfg.image_size, std=cfg.gauss_std)
    out['score'] = losses.fcdd_image_scores(low, out['heatmap'], cfg.image_score_top)
    out['heatmap_lowres'] = low
  elif cfg.objective == 'hsc':
    z = state.apply_fn(variables, x, train=False)
    out['score'] = losses.hsc_scores(z)
    score_fn = lambda xx: losses.hsc_scores(state.apply_fn(variables, xx, train=False))
    out['heatmap'] = losses.hsc_gradient_heatmaps(score_fn, x, blur=cfg.blur, r=cfg.blur_r, std=cfg.gauss_std)
  else:
    recon = state.apply_fn(variables, x, train=False)
    out['score'] = losses.ae_scores(recon, x)
    out['heatmap'] = losses.ae_heatmaps(recon, x)
  for k in ('label', 'valid', 'index', 'gtmap'):
    if k in batch:
      out[k] = batch[k]
  return out


def compile_eval(built):
  """The jitted `eval_step` of a built run (params replicated, batch and outputs sharded on 'data'): the one
  compiled evaluation of single runs, many runs and refinement rounds."""
  return jax.jit(functools.partial(eval_step, cfg=built.step_config), in_shardings=(built.replicated,
                 built.data_sharding), out_shardings=built.data_sharding)


def bn_stats_step(state, batch):
  """This batch's BatchNorm statistics for `model.precise_bn`: (stats like `state.batch_stats`, real rows).

  The train-mode forward pass updates each running statistic S to S' = (1 - m)·S + m·B, B the batch's
  mean or (unbiased) variance over its real rows; solved here for B. A BatchNorm that does not update
  (frozen, spec §11.1 option) has S' = S and so keeps B = S."""
  m = layers.BN_MOMENTUM
  mask = {'mask': batch['valid']} if 'valid' in batch else {}
  _, updates = state.apply_fn({'params': state.params, 'batch_stats': state.batch_stats}, batch['image'],
                              train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(0)},
                              **mask)
  stats = jax.tree.map(lambda new, old: (new - (1 - m) * old) / m, updates['batch_stats'], state.batch_stats)
  rows = jnp.sum(batch['valid']) if 'valid' in batch else jnp.float32(batch['image'].shape[0])
  return stats, rows


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
  r.writer.flush()
  r.ckpt.close()
  return results


def _setup(config, workdir, pipeline=None):
  """Checks, workdir lock, data, the run builder and the compiled steps."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top  (imports TF)
  t_begin = time.time()
  config_checks.check_config(config)
  is_main = jax.process_index() == 0
  run_lock = workdir_lib.prepare(config, workdir, is_main=is_main)  # lock, config check, config.json
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
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main, asynchronous=True)
  repl, data = built.replicated, built.data_sharding
  train_fn = jax.jit(functools.partial(train_step, cfg=built.step_config, frozen=built.frozen),
                     in_shardings=(repl, data, repl), out_shardings=(repl, repl), donate_argnums=(0,))
  return _Run(config, workdir, is_main, pipeline, built, total_steps, ckpt, writer, train_fn, compile_eval(built),
              {'t_begin': t_begin})


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


def run_steps(log, state, start_step, total_steps, batches, step_fn, after_step=None):
  """The training loop of every run driver (one run, many runs, refinement rounds): steps start_step+1 ..
  total_steps, `step_fn(state, next(batches), step) -> (state, metrics)`, at most one step in flight (host
  time tracks device progress), `log` (a TrainLog: lines, scalars, non-finite checks), then
  `after_step(step, state, metrics) -> state` (checkpoints, preemption, precise BN of one run)."""
  prev_metrics = None
  for step in range(start_step + 1, total_steps + 1):
    state, metrics = step_fn(state, next(batches), step)
    if prev_metrics is not None:
      jax.block_until_ready(prev_metrics)
    prev_metrics = metrics
    log.add(step, metrics)
    if log.due(step):
      log.write(step, metrics)
    if after_step is not None:
      state = after_step(step, state, metrics)
  return state


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
      state = precise_bn(r.config, state, r.pipeline, r.built, r.is_main)
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

  state = run_steps(log, state, start_step, r.total_steps, batches, step_fn, after_step)
  r.ckpt.wait()
  return state


def precise_bn(config, state, pipeline, built, verbose=False):
  """`model.precise_bn`: the running BatchNorm statistics replaced, after the last step, by the statistics
  the final net produces (PreciseBN): per layer the mean over batches of `bn_stats_step`'s statistics,
  weighted by real rows. `model.precise_bn_data`: `images` = the nominal training images under the test
  transform (batches of up to 8 per device); `stream` = one epoch of the training stream as the net was
  trained on it (augmented, with its generated anomalies and its global batches), the distribution whose
  batch statistics the net saw at every step. A short run's running averages still hold the statistics of
  the first steps' nets (after 35 steps at momentum 0.1, 2.5 % of step 1 and 35 % from steps 1-25), which
  evaluation then applies to a net that has moved on; `bench/README.md`, "Panel", has what each does to
  detection. Returns the state (unchanged when off or the net has no BatchNorm); one run saves it as its
  final checkpoint, many-runs mode and refinement call it per model before evaluating."""
  if not config.model.precise_bn or not state.batch_stats:
    return state
  if config.model.get('precise_bn_data', 'images') == 'stream':
    n = pipeline.info.steps_per_epoch
    what, batches = 'the training stream', itertools.islice(pipeline.train_batches(0), n)
  else:
    # batches of at most 8 images per device: the row-weighted mean of unbiased batch statistics does not
    # depend on the batch size, the forward pass's memory does (batch 32: +0.5 GiB on VGG_NOPT at 224²)
    bs = min(config.batch_size, 8 * jax.device_count())
    n, what, batches = pipeline.num_eval_batches('train', bs), 'the training images', pipeline.eval_batches(
        split='train', batch_size=bs)
  track = progress.Progress(f'recomputing BatchNorm statistics on {what}', n, 'batches', enabled=verbose)
  repl, data = built.replicated, built.data_sharding

  def add(acc, st, batch):   # running sums in one program (multi-host arrays never leave jit)
    stats, rows = bn_stats_step(st, batch)
    return jax.tree.map(lambda t, v: t + v * rows, acc[0], stats), acc[1] + rows

  zeros = jax.jit(lambda bs_: (jax.tree.map(jnp.zeros_like, bs_), jnp.float32(0)), out_shardings=repl)
  add = jax.jit(add, in_shardings=(repl, repl, data), out_shardings=repl, donate_argnums=(0,))
  mean = jax.jit(lambda acc: jax.tree.map(lambda t: t / jnp.maximum(acc[1], 1), acc[0]), out_shardings=repl)
  acc = zeros(state.batch_stats)
  batches = ({k: b[k] for k in ('image', 'valid') if k in b} for b in batches)   # what bn_stats_step reads
  for gb in input_pipeline.prefetch_to_device(batches, data):
    acc = add(acc, state, gb)
    track.update()
  track.close()
  return state.replace(batch_stats=mean(acc))


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


def evaluate(config, pipeline, state, eval_fn, data_sharding, is_main, train_heatmaps=True):
  """The evaluation every run driver shares: test outputs, image and pixel AUCs, thresholds/AUPRO (process 0),
  training heatmaps (config.eval.train_heatmaps, when `train_heatmaps`). Returns (outputs, train outputs or
  None, results: AUCs, `runs`, thresholds, `pollution`)."""
  bs = config.eval.batch_size or None
  outputs = results_lib.run_evaluation(state, pipeline, eval_fn, data_sharding, 'test', bs,
                                       keep_images=config.eval.num_figure_samples // 2, verbose=is_main)
  image_auc, pixel_auc = results_lib.compute_metrics(config, pipeline, outputs)
  train_outputs = None
  if train_heatmaps and config.eval.train_heatmaps:  # training heatmaps (spec §8.1): first batch of train images
    train_outputs = results_lib.run_evaluation(state, pipeline, eval_fn, data_sharding, 'train', bs, max_batches=1)
  results = {'image_auc': image_auc, 'pixel_auc': pixel_auc,
             'runs': [{'normal_class': int(pipeline.info.normal_class), 'seed': int(config.seed),
                       'image_auc': image_auc, 'pixel_auc': pixel_auc}]}
  if is_main:
    try:
      results.update(results_lib.thresholds_and_aupro(config, outputs))
    except Exception as e:  # pylint: disable=broad-except  (never lose a finished run over extras)
      logging.exception('thresholds/AUPRO failed: %s', e)
  if pipeline.pollution:   # data.pollution: the known true anomalies in the training set
    results['pollution'] = pipeline.pollution
  return outputs, train_outputs, results


def write_results(workdir, config, pipeline, results, outputs, train_outputs=None):
  """results.json (before figures: a figure problem never loses the numbers), reports and figures, then
  results.json again with the figures' time and the peak memory. Process 0 only."""
  results['peak_rss_bytes'] = memory.peak_rss_bytes()
  results['allocator'] = memory.active_allocator()
  results_lib.write_json(workdir, 'results.json', results)
  t_fig = time.time()
  progress.say('writing figures ...')
  results_lib.write_figures(workdir, config, pipeline, outputs, train_outputs, results=results)
  results['figures_seconds'] = round(time.time() - t_fig, 2)
  results['peak_rss_bytes'] = memory.peak_rss_bytes()
  results_lib.write_json(workdir, 'results.json', results)


def _evaluate(r, state):
  """`evaluate` plus the run's phase timings."""
  t_eval = time.time()
  config = r.config
  outputs, train_outputs, results = evaluate(config, r.pipeline, state, r.eval_fn, r.built.data_sharding,
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
  write_results(r.workdir, r.config, r.pipeline, results, outputs, train_outputs)
  fmt = lambda v: 'n/a' if v is None else f'{v:.4f}'
  t, ips = r.timings, results['train_images_per_second']
  ft = progress.fmt_time
  print(f'fcdd_jax: image AUC {fmt(results["image_auc"])}  pixel AUC {fmt(results["pixel_auc"])}  (load '
        f'{ft(t.get("load_seconds", 0))}, compile {ft(t.get("compile_seconds", 0))}, '
        f'train {ft(t["train_seconds"])}' + (f' at {ips:.2f} img/s' if ips else '') + f' ({results["dtype"]})' +
        f', eval {ft(results["eval_seconds"])}, figures {ft(results["figures_seconds"])}; peak memory '
        f'{results["peak_rss_bytes"] / 2**30:.2f} GiB); results in {os.path.join(r.workdir, "results.json")}',
        flush=True)

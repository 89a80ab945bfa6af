"""The programs every run driver compiles and runs: the pure `train_step` and `eval_step`, their jitted forms
(`compile_train`, `compile_eval`: parameters replicated, batches sharded on the mesh's 'data' axis), the
BatchNorm statistics pass after the last step (`bn_stats_step`, `precise_bn`) and `run_steps`, the one training
loop of single runs, many runs and refinement rounds (with `train_log.TrainLog`: lines, scalars, non-finite
checks). Drivers: `train` (one run), `multirun` (many runs as one program), `refine_run` (refinement rounds).
"""
import functools
import itertools

import jax
import jax.numpy as jnp
import optax

from fcdd_jax import input_pipeline
from fcdd_jax.models import layers
from fcdd_jax.models import losses
from fcdd_jax.models import receptive
from fcdd_jax.utils import progress


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
  keep the unmasked program; `train._loop` compiles the masked one ahead."""
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


def compile_train(built):
  """The jitted `train_step` of a built run (state and rng replicated, batch sharded on 'data', the state
  donated): the single run's step; many runs vmap or unroll `train_step` themselves (`multirun`)."""
  repl, data = built.replicated, built.data_sharding
  return jax.jit(functools.partial(train_step, cfg=built.step_config, frozen=built.frozen),
                 in_shardings=(repl, data, repl), out_shardings=(repl, repl), donate_argnums=(0,))


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



# ----------------------------------------------------------------------------------------------------
# BatchNorm statistics after the last step

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


# ----------------------------------------------------------------------------------------------------
# The training loop of every driver

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

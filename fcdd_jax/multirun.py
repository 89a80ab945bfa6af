"""Many runs in one program: classes x seeds trained as ONE compiled train step vmapped over a leading
model axis (`config.runs='0-9x0-4'`), each model with its own deterministic data stream.

  python -m fcdd_jax.main --config configs/fmnist.py --workdir runs/fmnist --config.runs=0-9x0-2

Every run r = (normal class c, seed s) gets exactly the pipeline, initialisation and RNG stream of a
separate `python -m fcdd_jax.main ... --config.seed=s --config.data.normal_class=c` run; runs with fewer
steps are padded (their updates masked). Results are written in the sweep layout
`DIR/normal_<c>/seed_<s>/` (results.json, checkpoint of the final state, figures) plus `DIR/summary.{md,json}`.
The per-epoch learning-rate schedule needs equal steps per epoch across runs (true for one-vs-rest
FMNIST/CIFAR-10) unless `optim.schedule='constant'`. Runs are not checkpointed mid-way (rerun to restart).
"""
import copy
import functools
import json
import os
import time

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import numpy as np

from fcdd_jax import checkpointing
from fcdd_jax import input_pipeline
from fcdd_jax import progress
from fcdd_jax import train


def model_axis_mode():
  """'vmap' (batched over the model axis; accelerators) or 'unroll' (the per-model steps unrolled in one
  program; CPU, where vmapped convolutions become grouped convolutions that run 3-5x slower and a
  `lax.map` loop 35x slower, bench/README.md). The environment variable FCDD_MODEL_AXIS overrides."""
  forced = os.environ.get('FCDD_MODEL_AXIS', '')
  if forced in ('vmap', 'unroll'):
    return forced
  return 'unroll' if jax.default_backend() == 'cpu' else 'vmap'


def unrolled(step_fn, state, batch, rngs):
  """Applies step_fn to each model of the leading axis, unrolled in one traced program; restacks."""
  m = rngs.shape[0]
  outs = [step_fn(jax.tree.map(lambda x, i=i: x[i], state), jax.tree.map(lambda x, i=i: x[i], batch), rngs[i])
          for i in range(m)]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def parse_runs(spec):
  """'0-9x0-4' -> [(class, seed), ...] (classes outer, seeds inner)."""
  def rng(t):
    out = []
    for part in t.split(','):
      if '-' in part[1:]:
        a, b = part.split('-', 1)
        out += list(range(int(a), int(b) + 1))
      elif part.strip():
        out.append(int(part))
    return out
  try:
    classes, seeds = spec.lower().split('x')
    runs = [(c, s) for c in rng(classes) for s in rng(seeds)]
  except ValueError:
    runs = []
  if not runs:
    raise train.ConfigError(f"config.runs={spec!r}: expected 'CLASSESxSEEDS', e.g. '0-9x0-4' or '0,3x0'")
  return runs


def _run_config(config, c, s):
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    cfg.runs = ''
    cfg.seed = s
    cfg.data.normal_class = c
  return cfg


def train_and_evaluate_runs(config, workdir):
  train.check_config(config)
  runs = parse_runs(config.runs)
  n_proc = jax.process_count()
  is_main = jax.process_index() == 0
  cfgs = [_run_config(config, c, s) for c, s in runs]
  pipes = [input_pipeline.create(cf, jax.process_index(), n_proc) for cf in cfgs]
  info0 = pipes[0].info
  spes = [p.info.steps_per_epoch for p in pipes]
  if min(spes) <= 0:
    raise train.ConfigError(f'a run has fewer training examples than config.batch_size={config.batch_size}')
  if len(set(spes)) > 1 and config.optim.schedule != 'constant':
    raise train.ConfigError(
        f'config.runs: the runs have different steps per epoch ({sorted(set(spes))}); the per-epoch '
        f"{config.optim.schedule!r} schedule cannot be shared; use optim.schedule='constant' or separate runs")
  totals = [cf.num_train_steps if cf.num_train_steps > 0 else cf.num_epochs * spe for cf, spe in zip(cfgs, spes)]
  T = max(totals)
  built = train.build_run(config, info0, spes[0])   # the same model, step settings and weights as one run
  model, scfg, frozen = built.model, built.step_config, built.frozen
  mesh = jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  repl = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(None, 'data'))
  data_sharding = NamedSharding(mesh, P('data'))
  init_rngs, step_rngs = [], []
  for cf in cfgs:
    a, b = jax.random.split(jax.random.PRNGKey(cf.seed))
    init_rngs.append(a)
    step_rngs.append(b)
  states = [built.init_state(r, repl) for r in init_rngs]
  stacked = jax.device_put(jax.tree.map(lambda *xs: jnp.stack(xs), *states), repl)
  del states
  step_rngs = jax.device_put(jnp.stack(step_rngs), repl)

  step_fn = functools.partial(train.train_step, cfg=scfg, frozen=frozen)
  mode = model_axis_mode()

  def multi_step(state, batch, rngs, active):
    if mode == 'vmap':
      new, metrics = jax.vmap(step_fn)(state, batch, rngs)
    else:  # the model axis unrolled inside one program (XLA:CPU runs vmapped convs as slow grouped convs)
      new, metrics = unrolled(step_fn, state, batch, rngs)
    keep = lambda n, o: jnp.where(active.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
    return jax.tree.map(keep, new, state), metrics

  p_step = jax.jit(multi_step, in_shardings=(repl, batch_sharding, repl, repl), out_shardings=(repl, repl),
                   donate_argnums=(0,))
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    print(f'fcdd_jax: {len(runs)} runs as one program ({config.model.name}, {info0.name}, model axis: {mode}), '
          f'{T} steps '
          f'(per run {min(totals)}..{max(totals)}), global batch {config.batch_size} per run', flush=True)
  iters = [p.train_batches(0) for p in pipes]
  last = [None] * len(runs)
  t0 = time.time()
  for step in range(1, T + 1):
    local = []
    for r, it in enumerate(iters):
      if step <= totals[r] or last[r] is None:
        last[r] = next(it)
      local.append(last[r])
    keys = set().union(*local)          # a run in its padded last batch carries 'valid'; full batches do not
    if 'valid' in keys:
      local = [b if 'valid' in b else {**b, 'valid': np.ones(len(b['image']), np.float32)} for b in local]
    batch = {k: np.stack([b[k] for b in local]) for k in sorted(keys)}
    gbatch = {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in batch.items()}
    active = jnp.asarray([step <= t for t in totals])
    stacked, metrics = p_step(stacked, gbatch, step_rngs, active)
    if step % config.log_every_steps == 0 or step == T:
      loss = np.asarray(jax.device_get(metrics['loss']))
      if not np.isfinite(loss[np.asarray(active)]).all():
        raise train.NonFiniteError(f'non-finite loss at step {step} in runs '
                                   f'{[runs[i] for i in np.flatnonzero(~np.isfinite(loss))]}; nothing saved')
      if is_main:
        rate = step / max(time.time() - t0, 1e-9)
        print(f'step {step}/{T}  mean loss {float(loss.mean()):.4f}  {rate:.2f} steps/s  '
              f'{rate * config.batch_size * len(runs):.0f} img/s (all runs)  '
              f'ETA {progress.fmt_time((T - step) / max(rate, 1e-9))}', flush=True)
  train_seconds = time.time() - t0
  p_eval = jax.jit(functools.partial(train.eval_step, cfg=scfg), in_shardings=(repl, data_sharding),
                   out_shardings=data_sharding)
  results = []
  for r, ((c, s), cf, pipe) in enumerate(zip(runs, cfgs, pipes)):
    state_r = jax.tree.map(lambda x, r=r: x[r], stacked)
    outputs = train.run_evaluation(state_r, pipe, p_eval, data_sharding, 'test', cf.eval.batch_size or None,
                                   keep_images=cf.eval.num_figure_samples // 2)
    image_auc, pixel_auc = train.compute_metrics(cf, pipe, outputs)
    rd = os.path.join(workdir, f'normal_{c}', f'seed_{s}')
    res = {'image_auc': image_auc, 'pixel_auc': pixel_auc,
           'runs': [{'normal_class': c, 'seed': s, 'image_auc': image_auc, 'pixel_auc': pixel_auc}],
           'steps': int(totals[r]), 'train_seconds_all_runs': round(train_seconds, 2)}
    if is_main:
      os.makedirs(rd, exist_ok=True)
      res.update(train.thresholds_and_aupro(cf, outputs))
      with open(os.path.join(rd, 'config.json'), 'w') as f:
        f.write(cf.to_json_best_effort(indent=2, sort_keys=True))
      with open(os.path.join(rd, 'preprocessing.json'), 'w') as f:
        json.dump(train.jsonable(pipe.info.preprocessing), f, indent=2)
      with open(os.path.join(rd, 'results.json'), 'w') as f:
        json.dump(res, f, indent=2)
    ck = checkpointing.Checkpointer(os.path.join(rd, 'checkpoints'), max_to_keep=1, asynchronous=False)
    ck.save(int(totals[r]), state_r, {'step': int(totals[r]), 'finished': True, 'multirun': True})
    ck.close()
    if is_main:
      try:
        from fcdd_jax import figures  # pylint: disable=g-import-not-at-top
        figures.write_run_figures(rd, cf, pipe, outputs)
      except Exception as e:  # pylint: disable=broad-except  (figures never lose the trained runs)
        if os.environ.get('FCDD_STRICT_FIGURES'):
          raise
        print(f'warning: figures of {rd} could not be written: {e}', flush=True)
      print(f'fcdd_jax: normal_{c}/seed_{s}: image AUC {image_auc}  pixel AUC {pixel_auc}', flush=True)
    results.append(res)
  if is_main:
    from fcdd_jax import summarize  # pylint: disable=g-import-not-at-top
    summarize.main([workdir])
  return results

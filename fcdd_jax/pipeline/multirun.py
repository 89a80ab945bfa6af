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
import os
import time

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import numpy as np

from fcdd_jax.utils import checkpointing
from fcdd_jax.pipeline import config_checks
from fcdd_jax import input_pipeline
from fcdd_jax.utils import progress
from fcdd_jax.utils import summaries
from fcdd_jax.evaluation import results as results_lib
from fcdd_jax.pipeline import run as run_lib
from fcdd_jax.pipeline import evaluate as evaluate_lib
from fcdd_jax.pipeline import steps
from fcdd_jax.pipeline import train_log
from fcdd_jax.utils import workdir as workdir_lib


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


def _run_config(config, c, s):
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    cfg.runs = ''
    cfg.seed = s
    cfg.data.normal_class = c
  return cfg


def train_and_evaluate_runs(config, workdir):
  """Trains the runs of config.runs as one program, then evaluates and writes each run (module doc)."""
  config_checks.check_config(config)
  runs = config_checks.parse_runs(config.runs)
  is_main = jax.process_index() == 0
  lock = workdir_lib.prepare(config, workdir, config_checks.check_resume, is_main=is_main)   # checked and locked before any work
  try:
    return _train_and_evaluate_runs(config, workdir, runs, is_main)
  finally:
    if lock is not None:
      lock.release()


def _train_and_evaluate_runs(config, workdir, runs, is_main):
  cfgs = [_run_config(config, c, s) for c, s in runs]
  pipes = [input_pipeline.create(cf, jax.process_index(), jax.process_count()) for cf in cfgs]
  keys = [tuple(jax.random.split(jax.random.PRNGKey(cf.seed))) for cf in cfgs]   # (init, step) as in one run
  config_checks.check_many_runs(config, [p.info.steps_per_epoch for p in pipes])   # one shared schedule
  t0 = time.time()
  built, stacked, totals = train_stacked(config, pipes, keys, names=[f'normal_{c}/seed_{s}' for c, s in runs],
                                         workdir=workdir)
  train_seconds = time.time() - t0
  eval_fn = steps.compile_eval(built)
  results = [_evaluate_and_write(workdir, run, cf, pipe, jax.tree.map(lambda x, r=r: x[r], stacked), eval_fn,
                                 built, totals[r], train_seconds, is_main)
             for r, (run, cf, pipe) in enumerate(zip(runs, cfgs, pipes))]
  if is_main:
    from fcdd_jax.evaluation import summary as summarize  # pylint: disable=g-import-not-at-top
    summarize.main([workdir])
  return results


def train_stacked(config, pipes, keys, names=None, workdir=None):
  """Trains len(pipes) models of `config` as ONE program: model m on the training stream of pipes[m], from
  keys[m] = (init key, step key), for its own number of steps (shorter ones repeat their last batch with the
  update masked). The run builder is the single run's (`run.build_run`: pretrained weights, blur, loss
  options); every model follows the per-epoch learning-rate schedule counted in pipes[0]'s epochs (callers
  that need equal steps per epoch check it: `config_checks.check_many_runs`; the refinement's subsets differ
  by at most one sample). The loop is the single run's (`steps.run_steps` with a `TrainLog` over the models:
  lines, non-finite checks per model; TensorBoard scalars and history.json in `workdir` when given).
  Returns (the built run, the stacked final states [M, ...], the steps of each model). `names` label the
  models in messages."""
  names = names or [f'model {m}' for m in range(len(pipes))]
  spes = [p.info.steps_per_epoch for p in pipes]
  totals = [config_checks.total_steps(config, p.info) for p in pipes]
  built = run_lib.build_run(config, pipes[0].info, spes[0])   # the same model, step settings and weights as one run
  states = [built.init_state(k[0]) for k in keys]
  stacked = jax.device_put(jax.tree.map(lambda *xs: jnp.stack(xs), *states), built.replicated)
  del states
  step_rngs = jax.device_put(jnp.stack([k[1] for k in keys]), built.replicated)
  batch_sharding = NamedSharding(built.mesh, P(None, 'data'))
  p_step, mode = _compile_multi_step(built, batch_sharding)
  is_main = jax.process_index() == 0
  if is_main:
    print(f'fcdd_jax: {len(pipes)} models as one program ({config.model.name}, {pipes[0].info.name}, model axis: '
          f'{mode}), {max(totals)} steps (per model {min(totals)}..{max(totals)}), global batch '
          f'{config.batch_size} per model', flush=True)
  writer = summaries.SummaryWriter(workdir if is_main else None)
  log = train_log.TrainLog(config, workdir, writer, spes[0], max(totals), 0, {'t_start': time.time()}, is_main,
                           names=names)
  progress.say('compiling the train step of all models and running step 1 ...', is_main)
  step_fn = lambda state, item, step: p_step(state, item[0], step_rngs, item[1])
  stacked = steps.run_steps(log, stacked, 0, max(totals), _stacked_batches(pipes, totals, batch_sharding), step_fn)
  writer.close()
  return built, stacked, totals


def _compile_multi_step(built, batch_sharding):
  """The jitted step of all models: vmapped or unrolled over the model axis; inactive runs keep their state."""
  step_fn = functools.partial(steps.train_step, cfg=built.step_config, frozen=built.frozen)
  mode = model_axis_mode()

  def multi_step(state, batch, rngs, active):
    if mode == 'vmap':
      new, metrics = jax.vmap(step_fn)(state, batch, rngs)
    else:  # the model axis unrolled inside one program (XLA:CPU runs vmapped convs as slow grouped convs)
      new, metrics = unrolled(step_fn, state, batch, rngs)
    keep = lambda n, o: jnp.where(active.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
    return jax.tree.map(keep, new, state), metrics

  repl = built.replicated
  return jax.jit(multi_step, in_shardings=(repl, batch_sharding, repl, repl), out_shardings=(repl, repl),
                 donate_argnums=(0,)), mode


def _stacked_batches(pipes, totals, batch_sharding):
  """(global batch [M, B, ...], active [M]) per step: every model's own batch; a finished model repeats its
  last batch (its update masked by `active`)."""
  iters = [p.train_batches(0) for p in pipes]
  last = [None] * len(pipes)
  for step in range(1, max(totals) + 1):
    local = []
    for r, it in enumerate(iters):
      if step <= totals[r] or last[r] is None:
        last[r] = next(it)
      local.append(last[r])
    keys = set().union(*local)          # a run in its padded last batch carries 'valid'; full batches do not
    if 'valid' in keys:
      local = [b if 'valid' in b else {**b, 'valid': np.ones(len(b['image']), np.float32)} for b in local]
    batch = input_pipeline.to_global({k: np.stack([b[k] for b in local]) for k in sorted(keys)}, batch_sharding)
    yield batch, jnp.asarray([step <= t for t in totals])


def _evaluate_and_write(workdir, run, cf, pipe, state, eval_fn, built, num_steps, train_seconds, is_main):
  """Run `r` = (class c, seed s) in DIR/normal_<c>/seed_<s>/: precise BN, the single run's evaluation and
  files (`evaluate.evaluate`, `evaluate.write_results`; config.json, preprocessing.json) and its final checkpoint."""
  c, s = run
  state = steps.precise_bn(cf, state, pipe, built, is_main)
  outputs, _, res = evaluate_lib.evaluate(cf, pipe, state, eval_fn, built.data_sharding, is_main, train_heatmaps=False)
  res.update(steps=int(num_steps), train_seconds_all_runs=round(train_seconds, 2))
  rd = os.path.join(workdir, f'normal_{c}', f'seed_{s}')
  if is_main:
    os.makedirs(rd, exist_ok=True)
    with open(os.path.join(rd, workdir_lib.CONFIG_NAME), 'w') as f:
      f.write(workdir_lib.config_json(cf))
    results_lib.write_json(rd, 'preprocessing.json', pipe.info.preprocessing)
    results_lib.write_json(rd, 'results.json', res)
  ck = checkpointing.Checkpointer(os.path.join(rd, 'checkpoints'), max_to_keep=1, asynchronous=False)
  ck.save(int(num_steps), state, {'step': int(num_steps), 'finished': True, 'multirun': True})
  ck.close()
  if is_main:
    evaluate_lib.write_results(rd, cf, pipe, res, outputs)
    print(f'fcdd_jax: normal_{c}/seed_{s}: image AUC {res["image_auc"]}  pixel AUC {res["pixel_auc"]}', flush=True)
  return res

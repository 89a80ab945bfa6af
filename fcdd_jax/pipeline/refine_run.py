"""Training on a polluted training set with ensemble refinement (issue 16): the driver of `refine.rounds > 0`.

  python -m fcdd_jax.main --config demo --workdir runs/refined --config.data.pollution=0.1 \\
      --config.refine.rounds=2 --config.refine.subsets=5 --config.refine.drop=0.1

Round r (0-based) of R = refine.rounds: the current training set (indices into the data's training set; all
of it in round 0) is split into K = refine.subsets disjoint subsets (`refine.split_subsets`, the data layer's
stream 'refine_subsets' of round r). K models, model k on subset k, are trained as ONE program by the
many-runs machinery (`multirun.train_stacked`: the model axis vmapped on accelerators, unrolled on CPU), each
with the run's data stream over its own subset and its own init and step keys (`model_keys`). Every model
scores every sample of the current set (the test transform, as for evaluation) and `refine.refine_round`
drops the samples its out-of-subset scores call anomalous (refine.drop: a share, or 'auto'). After the R
rounds the final model is a normal run on the kept set (`train.train_and_evaluate`: checkpoints, resume,
figures, results.json), and results.json gains `refinement: {rounds: [...], ...}` (with
dropped_true_anomalies / precision / recall whenever data.pollution says which samples are anomalies).

Deterministic given the seed. Resumable at round granularity: `refinement.json` in the workdir holds every
finished round (its kept and dropped indices and its record); a rerun skips those rounds (the settings must be
the same) and the final run resumes from its own checkpoints. Multi-host like a normal run: every process
computes the same rounds; process 0 writes the files.
"""
import json
import os
import time

import jax
import numpy as np

from fcdd_jax.pipeline import config_checks
from fcdd_jax import input_pipeline
from fcdd_jax.pipeline import multirun
from fcdd_jax.pipeline import refine
from fcdd_jax.evaluation import results as results_lib
from fcdd_jax.pipeline import steps
from fcdd_jax.pipeline import train
from fcdd_jax.utils import workdir as workdir_lib

STATE_FILE = 'refinement.json'


def model_keys(seed, round_index, subsets):
  """[(init key, step key)] of the K models of a round: split(fold_in(PRNGKey(seed), 1 + round·K + k)), so no
  model shares the keys of the final run (split(PRNGKey(seed))) or of another model."""
  base = jax.random.PRNGKey(int(seed))
  return [tuple(jax.random.split(jax.random.fold_in(base, 1 + round_index * subsets + k)))
          for k in range(subsets)]


def _identity(config, num_train, subsets, drop):
  """What a finished round depends on besides its index (checked when resuming): the data, supervision,
  model, loss and optimiser settings, the budget and the refinement's own settings. JSON-normalised, so it
  compares equal to the copy read back from refinement.json."""
  d = config.data
  ident = {'seed': int(config.seed), 'num_train': int(num_train), 'subsets': int(subsets), 'drop': drop,
           'pollution': float(d.get('pollution', 0.0)), 'data': d.name, 'root': d.get('root', ''),
           'normal_class': int(d.normal_class), 'supervise_mode': d.supervise_mode,
           'noise_mode': d.noise_mode, 'preproc': d.preproc, 'model': config.model.to_dict(),
           'loss': config.loss.to_dict(), 'optim': config.optim.to_dict(),
           'num_epochs': int(config.num_epochs), 'num_train_steps': int(config.num_train_steps),
           'batch_size': int(config.batch_size)}
  return json.loads(json.dumps(ident, default=str))


def load_state(workdir, identity):
  """The finished rounds recorded in workdir/refinement.json ([] when there is none); ValueError when the file
  was made with other settings."""
  path = os.path.join(workdir, STATE_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    saved = json.load(f)
  if saved.get('identity') != identity:
    diff = {k: (saved.get('identity', {}).get(k), v) for k, v in identity.items()
            if saved.get('identity', {}).get(k) != v}
    raise config_checks.ConfigError(f'{path} was written with other settings {diff} (saved, now); rerun with the same settings, '
                     '--restart, or a new --workdir')
  return saved['rounds']


def _save_state(workdir, identity, rounds):
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, STATE_FILE + '.tmp')
  with open(tmp, 'w') as f:
    json.dump({'identity': identity, 'rounds': rounds}, f)
  os.replace(tmp, os.path.join(workdir, STATE_FILE))


def run_round(config, src, current, round_index, subsets, drop, is_anomaly=None, verbose=True):
  """One round on the current set (indices into src's training set): (refine.Round, seconds)."""
  t0 = time.time()
  current = np.asarray(current, np.int64)
  pi, pc = jax.process_index(), jax.process_count()
  assignment = refine.split_subsets(len(current), subsets, config.seed, round_index)
  parts = refine.subset_indices(assignment, subsets)
  pipes = [input_pipeline.Pipeline(config, src, pi, pc, train_indices=current[p]) for p in parts]
  if verbose:
    print(f'fcdd_jax: refinement round {round_index + 1}: {subsets} models on disjoint subsets of '
          f'{len(current)} training samples ({min(map(len, parts))}..{max(map(len, parts))} each), one program',
          flush=True)
  built, stacked, _ = multirun.train_stacked(config, pipes, model_keys(config.seed, round_index, subsets),
                                             names=[f'round {round_index + 1} model {k}' for k in range(subsets)])
  scorer = input_pipeline.Pipeline(config, src, pi, pc, train_indices=current)
  eval_fn = steps.compile_eval(built)
  bs = config.eval.batch_size or None
  models = [steps.precise_bn(config, jax.tree.map(lambda x, k=k: x[k], stacked), pipes[k], built)
            for k in range(subsets)]   # (model.precise_bn: each on its own subset, as one run would be)
  scores = np.stack([results_lib.run_evaluation(m, scorer, eval_fn, built.data_sharding, 'train', bs)['score']
                     for m in models])
  rd = refine.refine_round(scores, assignment, drop, indices=current, is_anomaly=is_anomaly)
  return rd, time.time() - t0


def train_and_evaluate(config, workdir):
  """The refinement rounds (skipping those recorded in workdir/refinement.json), then the final run on the
  kept set; returns its results with `refinement` (module doc). The workdir is checked and locked before
  round 1 and stays locked until the final run has written its results."""
  config_checks.check_config(config)
  rounds, subsets, drop = config_checks.check_refine(config)
  is_main = jax.process_index() == 0
  lock = workdir_lib.prepare(config, workdir, config_checks.check_resume, is_main=is_main)   # (the final run re-enters it)
  try:
    return _rounds_and_final_run(config, workdir, rounds, subsets, drop, is_main)
  finally:
    if lock is not None:
      lock.release()


def _rounds_and_final_run(config, workdir, rounds, subsets, drop, is_main):
  src = input_pipeline.load_source(config)
  n = len(src.train_images)
  config_checks.check_refine(config, num_train=n)
  is_anomaly = None if src.pollution is None else np.asarray(src.train_is_anomaly, bool)
  identity = _identity(config, n, subsets, drop)
  done = load_state(workdir, identity)[:rounds]
  if done and is_main:
    print(f'fcdd_jax: refinement: {len(done)} finished round(s) read from {os.path.join(workdir, STATE_FILE)}',
          flush=True)
  current = np.asarray(done[-1]['kept'], np.int64) if done else np.arange(n)
  for r in range(len(done), rounds):
    rd, seconds = run_round(config, src, current, r, subsets, drop, is_anomaly, verbose=is_main)
    entry = {'round': r, **rd.record(), 'seconds': round(seconds, 2), 'kept': rd.kept.tolist(),
             'dropped_indices': rd.dropped.tolist()}
    done.append(entry)
    if is_main:
      _save_state(workdir, identity, done)
      extra = '' if rd.precision is None else f', precision {rd.precision:.3f}, recall {rd.recall:.3f}'
      print(f'fcdd_jax: refinement round {r + 1}: dropped {len(rd.dropped)} of {len(current)}{extra}', flush=True)
    current = rd.kept
  pipe = input_pipeline.Pipeline(config, src, jax.process_index(), jax.process_count(), train_indices=current)
  res = train.train_and_evaluate(config, workdir, pipeline=pipe)
  res['refinement'] = {
      'subsets': subsets, 'drop': drop, 'num_train': n, 'final_train_size': int(len(current)),
      'rounds': [{k: v for k, v in e.items() if k not in ('kept', 'dropped_indices')} for e in done]}
  if is_main:
    results_lib.write_json(workdir, 'results.json', res)
  return res

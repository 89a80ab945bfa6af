"""Training and evaluation: TrainState, pure train/eval steps, and `train_and_evaluate` (all side effects).

One call of `train_and_evaluate` = one run (one nominal class, one seed). Steps are compiled once with
`jax.jit` over a `Mesh(('data',))`: parameters replicated, batches sharded along 'data'. The same code
runs on 1 CPU, N GPUs or a multi-host TPU pod.
"""
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, Optional

from absl import logging
import flax
from flax.training import train_state
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fcdd_jax import checkpointing
from fcdd_jax import evaluation
from fcdd_jax import input_pipeline
from fcdd_jax import losses
from fcdd_jax import memory
from fcdd_jax import models
from fcdd_jax import progress
from fcdd_jax import receptive
from fcdd_jax import workdir as workdir_lib


class ConfigError(ValueError):
  """A configuration value that cannot work; the message names it and what is allowed."""


class NonFiniteError(FloatingPointError):
  """A NaN/inf in the loss or norms: the run stops before anything non-finite is saved."""


class TrainState(train_state.TrainState):
  batch_stats: Any = None


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the compiled steps."""
  objective: str                      # fcdd | hsc | ae
  gtmaps: bool                        # train batches carry 'gtmap' -> GT-map loss (spec §3.2)
  reception: Optional[receptive.Reception]
  gauss_std: Optional[float]
  image_size: tuple                   # (H, W)
  stable: bool = True
  single_label_parity: bool = True
  blur: bool = False
  blur_r: Optional[int] = None


# ----------------------------------------------------------------------------------------------------
# Construction

OPTIMIZERS = ('sgd', 'adam')
SCHEDULES = ('lambda', 'milestones', 'constant')
OBJECTIVES = ('auto', 'fcdd', 'hsc', 'ae')


def objective_for(config):
  name = config.model.name
  family = models.objective_of(name)
  if config.objective not in OBJECTIVES:
    raise ConfigError(f'config.objective={config.objective!r} is unknown; allowed: {", ".join(OBJECTIVES)}')
  if config.objective not in ('auto', family):
    raise ConfigError(
        f'config.objective={config.objective!r} does not fit net {name!r} (a {family} net); '
        f'use objective={family!r} or a {config.objective} net: '
        + ', '.join({'fcdd': models.FCDD_NAMES, 'hsc': models.HSC_NAMES, 'ae': models.AE_NAMES}[config.objective]))
  return family


def check_model_name(name):
  if name not in models.NAMES:
    raise ConfigError(f'config.model.name={name!r} is unknown; known nets: {", ".join(models.NAMES)}')


def check_config(config):
  """Validates what can be checked before any data is read."""
  check_model_name(config.model.name)
  objective_for(config)
  if config.optim.name not in OPTIMIZERS:
    raise ConfigError(f'config.optim.name={config.optim.name!r} is unknown; allowed: {", ".join(OPTIMIZERS)}')
  if config.optim.schedule not in SCHEDULES:
    raise ConfigError(
        f'config.optim.schedule={config.optim.schedule!r} is unknown; allowed: {", ".join(SCHEDULES)}')
  if config.batch_size <= 0:
    raise ConfigError(f'config.batch_size={config.batch_size} must be positive')
  n_dev = jax.device_count()
  if config.batch_size % n_dev:
    raise ConfigError(
        f'config.batch_size={config.batch_size} is not divisible by the {n_dev} devices; use a multiple '
        f'of {n_dev}, e.g. {max(n_dev, config.batch_size // n_dev * n_dev)}')
  eval_bs = config.eval.batch_size or config.batch_size
  if eval_bs % n_dev:
    raise ConfigError(f'config.eval.batch_size={eval_bs} is not divisible by the {n_dev} devices')
  if config.model.dtype not in ('float32', 'bfloat16'):
    raise ConfigError(f'config.model.dtype={config.model.dtype!r}; allowed: float32, bfloat16')
  name = config.model.name
  if name.startswith(('FCDD_CNN224_VGG', 'CNN224_VGG', 'AE224_VGG')) and 'NOPT' not in name:
    if not config.model.pretrained_path:
      raise ConfigError(
          f'{name} starts from ImageNet-pretrained VGG11-BN weights but config.model.pretrained_path is '
          'empty; get torchvision\'s vgg11_bn-6002323d.pth (see README, "Pretrained weights"), convert it '
          'with `python -m fcdd_jax.pretrained --pth vgg11_bn-6002323d.pth --out vgg11_bn.npz` (or pass the .pth), '
          'then --config.model.pretrained_path=FILE, or '
          f'train from scratch with --config.model.name={name.replace("_F", "").split("_VGG")[0]}_VGG_NOPT')
    if not os.path.exists(config.model.pretrained_path):
      raise ConfigError(f'config.model.pretrained_path={config.model.pretrained_path!r}: no such file')


def create_model(config, info):
  """Builds the net for the dataset's input shape; raises ConfigError when the image does not fit."""
  name = config.model.name
  check_model_name(name)
  h, w, c = models.input_shape(name)
  ih, iw, ic = info.image_shape
  if (ih, iw) != (h, w):
    raise ConfigError(
        f'images of data.name={info.name!r} are {ih}x{iw} but net {name!r} takes {h}x{w}; choose a net '
        f'for {ih}x{iw} inputs: ' + ', '.join(n for n in models.NAMES if models.input_shape(n)[:2] == (ih, iw)))
  options = dict(bias=config.model.bias, torch_init=config.model.torch_init,
                 bn_unbiased_var=config.model.bn_unbiased_var, frozen_bn=config.model.frozen_bn,
                 dtype=jnp.bfloat16 if config.model.dtype == 'bfloat16' else jnp.float32)
  if ic != c:
    options['in_channels'] = ic
  return models.create(name, **options)


def learning_rate_fn(config, steps_per_epoch):
  """Per-epoch schedules of spec §7.1, as a function of the optimiser step."""
  o = config.optim
  spe = max(1, steps_per_epoch)
  if o.schedule == 'constant':
    return lambda step: jnp.asarray(o.lr, jnp.float32)
  if o.schedule == 'lambda':
    return lambda step: o.lr * jnp.power(jnp.float32(o.gamma), (step // spe).astype(jnp.float32))
  milestones = np.asarray(sorted(o.milestones), np.int32)
  def fn(step):
    epoch = step // spe
    k = jnp.sum(epoch >= milestones)
    return o.lr * jnp.power(jnp.float32(o.milestone_factor), k.astype(jnp.float32))
  return fn


def create_optimizer(config, steps_per_epoch, frozen=None):
  """SGD-Nesterov or Adam with coupled L2 weight decay (spec §7.1); frozen params get no update."""
  o = config.optim
  lr = learning_rate_fn(config, steps_per_epoch)
  if o.name == 'sgd':
    opt = optax.sgd(lr, momentum=o.momentum, nesterov=True)
  else:
    opt = optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)
  tx = optax.chain(optax.add_decayed_weights(o.weight_decay), opt) if o.weight_decay else opt
  if frozen is not None and any(jax.tree.leaves(frozen)):
    labels = jax.tree.map(lambda f: 'frozen' if f else 'train', frozen)
    tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)
  return tx


def init_variables(model, image_shape, rng):
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  return model.init({'params': rng, 'dropout': rng}, x, train=False)


def create_train_state(config, model, image_shape, rng, steps_per_epoch, pretrained=None):
  variables = init_variables(model, image_shape, rng)
  if pretrained is not None:
    variables = pretrained(variables)
  params = variables['params']
  frozen = models.frozen_mask(config.model.name, params)
  tx = create_optimizer(config, steps_per_epoch, frozen)
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           batch_stats=variables.get('batch_stats', {}))


@dataclasses.dataclass
class Run:
  """What every entry point (one run, many runs, benchmarks) builds from a config and the data's Info."""
  model: Any
  objective: str
  step_config: StepConfig
  make_state: Callable[[Any], TrainState]   # rng -> TrainState (pretrained weights applied)
  pretrained: bool
  frozen: Any                               # mask of frozen params, or None

  def init_state(self, rng, sharding):
    """The initial TrainState placed with `sharding` (jitted; read on the host when weights come from a file)."""
    if not self.pretrained:
      return jax.jit(self.make_state, out_shardings=sharding)(rng)
    return jax.device_put(self.make_state(rng), sharding)


def build_run(config, info, steps_per_epoch, model=None):
  """Model, objective, static step settings and the state factory of a run: the single source for `train`,
  `multirun` and the benchmarks, so that pretrained weights, blur and loss options cannot drift apart."""
  model = model or create_model(config, info)
  objective = objective_for(config)
  counterpart = getattr(model, 'fcdd_counterpart', None)
  cfg = StepConfig(
      objective=objective, gtmaps=bool(info.train_gtmaps and objective == 'fcdd'),
      reception=getattr(model, 'reception', None),
      gauss_std=config.loss.gauss_std if config.loss.gauss_std > 0 else None,
      image_size=tuple(info.image_shape[:2]), stable=config.loss.stable,
      single_label_parity=config.loss.single_label_parity, blur=config.loss.blur_heatmaps,
      blur_r=models.reception(counterpart).r if counterpart else None)
  pretrained = None
  if config.model.pretrained_path:
    from fcdd_jax import pretrained as pretrained_lib  # pylint: disable=g-import-not-at-top
    pretrained = lambda v: pretrained_lib.apply_pretrained(config.model.name, v, config.model.pretrained_path)
  make_state = functools.partial(create_train_state, config, model, info.image_shape,
                                 steps_per_epoch=steps_per_epoch, pretrained=pretrained)
  shapes = jax.eval_shape(lambda: init_variables(model, info.image_shape, jax.random.PRNGKey(0)))['params']
  frozen = models.frozen_mask(config.model.name, shapes)
  return Run(model=model, objective=objective, step_config=cfg, make_state=make_state,
             pretrained=pretrained is not None, frozen=frozen if any(jax.tree.leaves(frozen)) else None)


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
  keep the unmasked program; jit compiles the masked one once, when the first padded batch comes."""
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
    out['score'] = losses.fcdd_scores(phi)
    out['heatmap'] = receptive.upsample(low, cfg.reception, cfg.image_size, std=cfg.gauss_std)
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


# ----------------------------------------------------------------------------------------------------
# Helpers with side effects

def _to_global(batch, sharding):
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def _prefetch(iterator, sharding, size=2):
  """Puts the next `size` batches on the devices ahead of time (transfers overlap compute)."""
  import collections  # pylint: disable=g-import-not-at-top
  queue = collections.deque()
  for b in iterator:
    queue.append(_to_global(b, sharding))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def _host_gather(tree):
  """Per-example outputs from all processes as NumPy (exact AUCs on multi-host runs)."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def check_finite(metrics, step, where):
  bad = {k: float(v) for k, v in metrics.items() if k in ('loss', 'l2_grads', 'l2_params')
         and not math.isfinite(float(v))}
  if bad:
    raise NonFiniteError(
        f'non-finite {", ".join(f"{k}={v}" for k, v in bad.items())} at step {step} ({where}); the run '
        'stops without saving it (lower --config.optim.lr or check the data); the last good checkpoint '
        'is kept')


def run_evaluation(state, pipeline, eval_fn, sharding, split='test', batch_size=None, keep_images=0,
                   max_batches=None, verbose=False):
  """Runs the jitted eval step over a split; returns host NumPy arrays of valid examples in order.

  With keep_images=n the inputs of the first n nominal and n anomalous examples this process sees are
  kept (key 'samples': {index: image}) for figures.
  """
  outs, samples, counts = [], {}, {0: 0, 1: 0}

  def local_batches():
    for i, b in enumerate(pipeline.eval_batches(split=split, batch_size=batch_size)):
      if max_batches is not None and i >= max_batches:
        break
      if keep_images:
        for i in range(len(b['label'])):
          lab = int(b['label'][i])
          if b['valid'][i] > 0 and counts.get(lab, keep_images) < keep_images:
            counts[lab] += 1
            samples[int(b['index'][i])] = np.array(b['image'][i])
      yield b

  total = pipeline.num_eval_batches(split, batch_size)
  total = total if max_batches is None else min(total, max_batches)
  track = progress.Progress(f'evaluating {split}', total, 'batches', enabled=verbose)
  for gb in _prefetch(local_batches(), sharding):
    outs.append(eval_fn(state, gb))
    if len(outs) > 1:
      jax.block_until_ready(outs[-2])
    track.update()
  track.close()
  if not outs:
    return {}
  host = [_host_gather(o) for o in outs]
  res = {k: np.concatenate([h[k] for h in host]) for k in host[0]}
  keep = res['valid'] > 0 if 'valid' in res else np.ones(len(res['score']), bool)
  res = {k: v[keep] for k, v in res.items()}
  if 'index' in res:
    order = np.argsort(res['index'], kind='stable')
    res = {k: v[order] for k, v in res.items()}
  res['samples'] = samples
  return res


def compute_metrics(config, pipeline, outputs):
  """Image AUC and pixel AUC (spec §8.2) from gathered per-example outputs."""
  labels = outputs['label'].astype(np.int32)
  image_auc = None
  if len(np.unique(labels)) == 2:
    image_auc = float(evaluation.roc_auc(labels, outputs['score']))
  else:
    logging.warning('test split has a single label; image AUC is undefined')
  pixel_auc = None
  if config.eval.pixel_auc and pipeline.info.test_gtmaps:
    masks = pipeline.test_masks_original() if config.eval.pixel_auc_resolution == 'original' else None
    if masks is not None:
      maps = (evaluation.resize_nearest(h, m.shape) for h, m in zip(outputs['heatmap'], masks))
      pixel_auc = float(evaluation.pixel_auc(masks, maps))
    elif 'gtmap' in outputs:
      pixel_auc = float(evaluation.pixel_auc(list(outputs['gtmap'] > 0.5), list(outputs['heatmap'])))
  return image_auc, pixel_auc


def thresholds_and_aupro(config, outputs):
  """Thresholds stored with the run (image and pixel) and AUPRO where masks exist (issue: user workflow).

  Labelled test data: the F1-maximising threshold; nominal-only data: the config.eval.threshold_quantile
  quantile of nominal scores (pixels: of nominal heatmap values).
  """
  labels = outputs['label'].astype(np.int32)
  scores = outputs['score']
  out = {'thresholds': {}}
  if len(np.unique(labels)) == 2:
    t, f1 = evaluation.f1_max_threshold(labels, scores)
    out['thresholds']['image'] = float(t)
    out['thresholds']['image_f1'] = float(f1)
    out['thresholds']['image_rule'] = 'f1_max on the labelled test set'
  else:
    q = config.eval.threshold_quantile
    out['thresholds']['image'] = float(evaluation.quantile_threshold(scores[labels == 0], q))
    out['thresholds']['image_rule'] = f'quantile {q} of nominal test scores'
  heat = outputs.get('heatmap')
  if heat is not None and heat.ndim == 3:
    if 'gtmap' in outputs and outputs['gtmap'].max() > 0:
      gt = outputs['gtmap'] > 0.5
      rng = np.random.default_rng(0)
      flat_h, flat_g = heat.reshape(-1), gt.reshape(-1)
      if flat_h.size > 4_000_000:  # the threshold (not the AUC) is fitted on a uniform pixel subsample
        sel = rng.choice(flat_h.size, 4_000_000, replace=False)
        flat_h, flat_g = flat_h[sel], flat_g[sel]
      t, f1 = evaluation.f1_max_threshold(flat_g.astype(np.int32), flat_h)
      out['thresholds']['pixel'] = float(t)
      out['thresholds']['pixel_f1'] = float(f1)
      out['thresholds']['pixel_rule'] = 'f1_max over test pixels (net input resolution)'
      out['aupro'] = float(evaluation.aupro(list(gt.astype(np.uint8)), list(heat)))
    else:
      q = config.eval.threshold_quantile
      nominal = heat[labels == 0] if (labels == 0).any() else heat
      out['thresholds']['pixel'] = float(evaluation.quantile_threshold(nominal.reshape(-1), q))
      out['thresholds']['pixel_rule'] = f'quantile {q} of nominal heatmap pixels'
  return out


def _fault_injection():
  """Test hook: FCDD_FAULT_INJECTION='kill@12' (SIGKILL itself after step 12), 'sigterm@8' (preemption
  signal), optionally restricted to one process with ':p<i>' (e.g. 'kill@10:p1'). Used by the
  multi-process tests to kill runs at a known step; unset in normal use."""
  spec = os.environ.get('FCDD_FAULT_INJECTION', '')
  if not spec:
    return None
  what, _, rest = spec.partition('@')
  step, _, proc = rest.partition(':p')
  if proc and int(proc) != jax.process_index():
    return None
  return what, int(step)


def default_workdir(config_name):
  return os.path.join('runs', f'{config_name}-{time.strftime("%Y%m%d-%H%M%S")}')


# ----------------------------------------------------------------------------------------------------
# The run

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) one run, evaluates it and writes everything into `workdir`. Returns results."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top  (imports TF)
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  from fcdd_jax import figures  # pylint: disable=g-import-not-at-top

  check_config(config)
  is_main = jax.process_index() == 0
  run_lock = workdir_lib.prepare(config, workdir, is_main=is_main)  # lock, config check, config.json
  n_proc, n_dev = jax.process_count(), jax.device_count()
  t_begin = time.time()
  pipeline = input_pipeline.create(config, process_index=jax.process_index(), process_count=n_proc)
  info = pipeline.info
  model = create_model(config, info)
  objective = objective_for(config)

  steps_per_epoch = info.steps_per_epoch
  if steps_per_epoch <= 0:
    raise ConfigError(
        f'the training set of data.root={config.data.root!r} has no examples ({info.num_train} per epoch); '
        'check the folder layout (README, "Running experiments")')
  total_steps = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch
  if total_steps <= 0:
    raise ConfigError(
        f'no training steps: {info.num_train} training examples per epoch with batch_size='
        f'{config.batch_size} give {steps_per_epoch} steps/epoch; lower batch_size or set num_train_steps')

  if is_main:
    with open(os.path.join(workdir, 'preprocessing.json'), 'w') as f:
      json.dump(jsonable(getattr(info, 'preprocessing', None) or {}), f, indent=2)
    print(f'fcdd_jax: workdir {os.path.abspath(workdir)}', flush=True)
    print(f'fcdd_jax: {info.name} class {info.normal_class} ({info.class_names[info.normal_class] if info.class_names else ""}), '
          f'{info.num_train} train / {info.num_test} test images {info.image_shape}, net {config.model.name}, '
          f'objective {objective}, {n_proc} process(es) x {jax.local_device_count()} device(s) '
          f'[{jax.devices()[0].device_kind}], global batch {config.batch_size} '
          f'(per process {config.batch_size // n_proc}, per device {config.batch_size // n_dev}), '
          f'{steps_per_epoch} steps/epoch, {total_steps} steps', flush=True)

  mesh = jax.make_mesh((n_dev,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  repl = NamedSharding(mesh, P())
  data_sharding = NamedSharding(mesh, P('data'))

  built = build_run(config, info, steps_per_epoch, model=model)
  cfg = built.step_config
  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  state = built.init_state(init_rng, repl)
  frozen = built.frozen

  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), max_to_keep=config.keep_checkpoints,
                                    on_close=run_lock.release if run_lock else None)
  restored, _, start_step = ckpt.restore_latest(state)  # damaged steps -> checkpoints/damaged-<step>/
  start_step = int(start_step or 0)
  if start_step > total_steps:
    raise ConfigError(f'the checkpoint in {workdir} is at step {start_step}, past the {total_steps} steps this '
                      'configuration trains; raise num_train_steps/num_epochs, or use --restart or a new --workdir')
  finished = restored is not None and start_step == total_steps   # (num_train_steps may have been raised)
  if restored is not None:
    state = restored
    if is_main:
      print(f'fcdd_jax: resumed from checkpoint step {start_step}' +
            (' (training had finished: evaluating only)' if finished else ''), flush=True)

  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main, asynchronous=True)
  if start_step == 0 and is_main:
    writer.write_hparams({k: v for k, v in workdir_lib.flatten(config.to_dict()).items()
                          if isinstance(v, (int, float, str, bool))})
    try:
      pipeline.write_preview(os.path.join(workdir, 'ds_preview.png'))
    except Exception as e:  # pylint: disable=broad-except  (a figure must never stop a run)
      logging.warning('could not write ds_preview.png: %s', e)

  p_train_step = jax.jit(
      functools.partial(train_step, cfg=cfg, frozen=frozen),
      in_shardings=(repl, data_sharding, repl), out_shardings=(repl, repl), donate_argnums=(0,))
  p_eval_step = jax.jit(functools.partial(eval_step, cfg=cfg), in_shardings=(repl, data_sharding),
                        out_shardings=data_sharding)
  lr_fn = learning_rate_fn(config, steps_per_epoch)

  history = []
  t_start = time.time()
  timings = {'load_seconds': round(t_start - t_begin, 2)}
  if not finished and start_step < total_steps:
    report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                             every_steps=config.log_every_steps)
    batches = _prefetch(pipeline.train_batches(start_step), data_sharding)
    acc, acc_n = None, 0
    last_metrics = prev_metrics = None
    t_log, step_log = time.time(), start_step
    t_first = None                      # when the first (compiling) step finished: rates and ETA start there
    step = start_step
    fault = _fault_injection()
    progress.say(f'compiling the train step and running step {start_step + 1} ...', is_main)
    for step in range(start_step + 1, total_steps + 1):
      batch = next(batches)
      state, metrics = p_train_step(state, batch, step_rng)
      if prev_metrics is not None:      # at most one step in flight: host time tracks device progress
        jax.block_until_ready(prev_metrics)
      prev_metrics = metrics
      if fault and fault[1] == step:
        import signal  # pylint: disable=g-import-not-at-top
        jax.block_until_ready(metrics)
        os.kill(os.getpid(), signal.SIGKILL if fault[0] == 'kill' else signal.SIGTERM)
        time.sleep(0.5)  # let the signal handler / preemption notifier run
      acc = metrics if acc is None else jax.tree.map(jnp.add, acc, metrics)
      acc_n += 1
      last_metrics = metrics
      report(step)
      if t_first is None:
        jax.block_until_ready(metrics)
        t_first = time.time()
        timings['compile_seconds'] = round(t_first - t_start, 2)
        progress.say(f'step {step} done in {progress.fmt_time(t_first - t_start)} (compile + first step)', is_main)
        t_log, step_log = t_first, step
        t_step = t_first
      is_log = step % config.log_every_steps == 0 or step == total_steps
      # a line whenever waiting for the next step would pass EVERY_SECONDS since the last one
      now = time.time()
      step_seconds, t_step = now - t_step, now
      is_line = is_log or now - t_log + step_seconds >= progress.EVERY_SECONDS
      is_save = step % config.checkpoint_every_steps == 0 or step == total_steps
      preempt = checkpointing.reached_preemption(step)
      if is_line and step > step_log:
        mean = {k: float(v) / acc_n for k, v in jax.device_get(acc).items()}
        mean['learning_rate'] = float(lr_fn(jnp.asarray(step - 1)))
        check_finite(mean, step, 'log step')
        check_finite(jax.device_get(last_metrics), step, 'log step')
        writer.write_scalars(step, {f'train/{k}': v for k, v in mean.items()})
        now = time.time()
        rate = (step - step_log) / max(now - t_log, 1e-9)
        avg = (step - start_step - 1) / max(now - t_first, 1e-9)   # since the first step: no compile time
        history.append({'step': step, 'epoch': (step - 1) // max(steps_per_epoch, 1), **mean})
        if is_main:
          _append_history(workdir, history)
          print(f'step {step}/{total_steps}  epoch {(step - 1) // max(steps_per_epoch, 1) + 1}/'
                f'{-(-total_steps // max(steps_per_epoch, 1))}  loss {mean["loss"]:.4f} (nominal '
                f'{mean["loss_nominal"]:.4f}, anomalous {mean["loss_anomalous"]:.4f})  {rate:.2f} steps/s  '
                f'{rate * config.batch_size:.1f} img/s  ETA {progress.fmt_time((total_steps - step) / max(avg, 1e-9))}',
                flush=True)
        t_log, step_log = now, step
        acc, acc_n = None, 0
      if is_save or preempt:
        check_finite(jax.device_get(last_metrics), step, 'before saving')
        ckpt.save(step, state, {'step': step, 'finished': step == total_steps,
                                'steps_per_epoch': steps_per_epoch})
      if preempt:
        ckpt.close()
        print(f'fcdd_jax: preemption at step {step}: checkpoint written, exiting; rerun the same command '
              'to resume', flush=True)
        raise SystemExit(0)
    ckpt.wait()
  train_seconds = time.time() - t_start

  # Evaluation -----------------------------------------------------------------------------------------
  t_eval = time.time()
  outputs = run_evaluation(state, pipeline, p_eval_step, data_sharding, 'test',
                           config.eval.batch_size or None, keep_images=config.eval.num_figure_samples // 2,
                           verbose=is_main)
  image_auc, pixel_auc = compute_metrics(config, pipeline, outputs)
  train_outputs = None
  if config.eval.train_heatmaps:  # training heatmaps (spec §8.1) from the first batch of nominal train images
    train_outputs = run_evaluation(state, pipeline, p_eval_step, data_sharding, 'train',
                                   config.eval.batch_size or None, max_batches=1)
  extra = {}
  if is_main:
    try:
      extra = thresholds_and_aupro(config, outputs)
    except Exception as e:  # pylint: disable=broad-except  (never lose a finished run over extras)
      logging.exception('thresholds/AUPRO failed: %s', e)
  eval_seconds = time.time() - t_eval
  steps_run = max(0, total_steps - start_step - 1) if not finished else 0
  loop_seconds = train_seconds - timings.get('compile_seconds', 0.0)
  results = {
      'image_auc': image_auc,
      'pixel_auc': pixel_auc,
      'runs': [{'normal_class': int(info.normal_class), 'seed': int(config.seed),
                'image_auc': image_auc, 'pixel_auc': pixel_auc}],
      **extra,
      'load_seconds': timings.get('load_seconds'),
      'compile_seconds': timings.get('compile_seconds'),
      'train_seconds': round(train_seconds, 2),
      'train_images_per_second': (round(steps_run * config.batch_size / loop_seconds, 3)
                                  if steps_run and loop_seconds > 0 else None),
      'eval_seconds': round(eval_seconds, 2),
      'steps': int(total_steps),
  }
  if is_main:
    scalars = {'eval/image_auc': image_auc}
    if pixel_auc is not None:
      scalars['eval/pixel_auc'] = pixel_auc
    writer.write_scalars(total_steps, {k: v for k, v in scalars.items() if v is not None})
    results['peak_rss_bytes'] = memory.peak_rss_bytes()
    results['allocator'] = memory.active_allocator()
    _write_results(workdir, results)   # before figures: a figure problem never loses the numbers
    t_fig = time.time()
    progress.say('writing figures ...')
    try:
      from fcdd_jax import reports  # pylint: disable=g-import-not-at-top
      hist_path = os.path.join(workdir, 'history.json')
      hist = json.load(open(hist_path)) if os.path.exists(hist_path) else None
      reports.write_reports(workdir, results, outputs, hist)
      figures.write_run_figures(workdir, config, pipeline, outputs, train_outputs)
    except Exception as e:  # pylint: disable=broad-except  (figures never lose a finished run)
      if os.environ.get('FCDD_STRICT_FIGURES'):   # tests: a figure that cannot be written is an error
        raise
      print(f'warning: figures could not be written: {type(e).__name__}: {e} (--verbose for the traceback)',
            flush=True)
      logging.debug('figures failed', exc_info=True)
    results['figures_seconds'] = round(time.time() - t_fig, 2)
    results['peak_rss_bytes'] = memory.peak_rss_bytes()
    _write_results(workdir, results)
    pa = 'n/a' if pixel_auc is None else f'{pixel_auc:.4f}'
    ia = 'n/a' if image_auc is None else f'{image_auc:.4f}'
    ips = results['train_images_per_second']
    print(f'fcdd_jax: image AUC {ia}  pixel AUC {pa}  (load {progress.fmt_time(timings.get("load_seconds", 0))}, '
          f'compile {progress.fmt_time(timings.get("compile_seconds", 0))}, train {progress.fmt_time(train_seconds)}'
          + (f' at {ips:.2f} img/s' if ips else '') +
          f', eval {progress.fmt_time(eval_seconds)}, figures {progress.fmt_time(results["figures_seconds"])}; '
          f'peak memory {results["peak_rss_bytes"] / 2**30:.2f} GiB); results in '
          f'{os.path.join(workdir, "results.json")}', flush=True)
  writer.flush()
  ckpt.close()
  return results


def _write_results(workdir, results):
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=2)


def jsonable(x):
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, np.generic):
    return x.item()
  return x


def _append_history(workdir, history):
  path = os.path.join(workdir, 'history.json')
  old = []
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
  last = old[-1]['step'] if old else 0
  with open(path, 'w') as f:
    json.dump(old + [h for h in history if h['step'] > last], f, indent=1)

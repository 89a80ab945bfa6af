"""The run builder: what a config and the data's shape determine before training starts.

`build_run(config, data, steps_per_epoch)` returns a `Run`: the net, the objective, the static settings of
the compiled steps (`StepConfig`: GT maps, receptive field, Gaussian σ, HSC heatmap blur), a factory of the
initial `TrainState` (optimiser, schedule, frozen layers, pretrained weights) and the data-parallel mesh. The
single run (`train`), many-runs mode (`multirun`), prediction (`predict`, through `model_options`) and the
benchmarks build from here, so pretrained weights, blur and loss options cannot drift apart between them.
"""
import dataclasses
import functools
from typing import Any, Callable, Optional

from flax.training import train_state
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import optax

from fcdd_jax.pipeline import config_checks
from fcdd_jax.models import feature_stack
from fcdd_jax.models.cpu import onednn
from fcdd_jax.models import losses
from fcdd_jax.models import nets as models
from fcdd_jax.models import receptive


class TrainState(train_state.TrainState):
  batch_stats: Any = None


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the compiled steps."""
  objective: str                      # fcdd | hsc | ae
  gtmaps: bool                        # train batches carry 'gtmap' -> GT-map loss (spec §3.2)
  reception: Optional[receptive.Reception]
  gauss_std: float                    # loss.gauss_std; <= 0: receptive.default_std of the net
  image_size: tuple                   # (H, W)
  stable: bool = True
  single_label_parity: bool = True
  blur: bool = False
  blur_r: Optional[int] = None
  image_score_top: Optional[float] = None   # FCDD image score (losses.parse_image_score); None = spec mean


@dataclasses.dataclass(frozen=True)
class DataShape:
  """What the builder needs to know about the data (a pipeline's `Info` has the same fields): for benchmarks
  and prediction, which build without a dataset."""
  image_shape: tuple                  # (H, W, C)
  train_gtmaps: bool = False          # training batches carry ground-truth maps
  name: str = 'data'


# ----------------------------------------------------------------------------------------------------
# Net, optimiser, state

def compute_dtype(config, backend=None):
  """config.model.dtype resolved to 'float32' or 'bfloat16' for `backend` (default: JAX's default backend).

  'auto' on XLA:CPU, where the CPU has bf16 arithmetic (AVX512-BF16, AMX): bfloat16 for the nets with 224²
  inputs, and for the small FCDD nets where the convolutions run on oneDNN; float32 otherwise (the small
  baseline classifiers and autoencoders too: no fidelity check in bfloat16), on CPUs without bf16 arithmetic
  and on GPU/TPU. On such CPUs the 224² nets train 1.2-1.45x as fast as PyTorch float32 in bfloat16 but
  0.8-1.05x in float32; the small FCDD nets in bfloat16 on oneDNN are as fast as PyTorch's autocast-bf16, which
  is twice its float32 there; and bfloat16 detects as well (README, "Speed"; bench/README.md, "Fidelity":
  Fashion-MNIST, CIFAR-10, the bottle). Without bf16 arithmetic bfloat16 is emulated and slower than float32
  (AVX2-only AMD EPYC, FCDD_CNN224_VGG_NOPT batch 32: 1.92 vs 2.08 img/s; bench/README.md, "CPUs without
  AVX-512"), and oneDNN has no bfloat16 convolutions there at all.
  It is the compute dtype only: params, optimiser state, weight gradients, BN statistics and scores are float32
  either way, so a run can resume, be evaluated or served in the other one."""
  dtype = config.model.get('dtype', 'float32')
  if dtype != 'auto':
    return dtype
  backend = backend or jax.default_backend()
  if backend != 'cpu' or not onednn.native_bf16():
    return 'float32'
  if models.input_shape(config.model.name)[0] >= 224:
    return 'bfloat16'
  fcdd = models.objective_of(config.model.name) == 'fcdd'
  return 'bfloat16' if fcdd and onednn.conv_impl(backend) == 'onednn' else 'float32'


def model_options(config):
  """models.create options from config.model (bias, init, BN variance, frozen BN, compute dtype)."""
  options = {k: config.model[k] for k in feature_stack.NET_OPTIONS if k not in ('dtype', 'remat')}
  return dict(options, dtype=jnp.bfloat16 if compute_dtype(config) == 'bfloat16' else jnp.float32)


def create_model(config, data, **options):
  """The net of config.model.name for the data's images; ConfigError when they do not fit it. `options`
  override `model_options(config)` (e.g. remat for benchmarks)."""
  config_checks.check_image_fits(config, data)
  if config.data.get('patch_size', 0):   # patch training: crops of data.patch_size, whole images in evaluation
    options = dict(options, any_size=True)
  return models.create(config.model.name, **{**model_options(config), **options})


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


def optimizer_name(config):
  """config.optim.name resolved: 'auto' is SGD-Nesterov for nets that start from pretrained weights and Adam
  for nets trained from scratch, the authors' own split (spec §7.2: SGD for MVTec/custom with VGG_F, Adam for
  ImageNet-30/VOC with VGG_NOPT and for CIFAR-10)."""
  name = config.optim.name
  if name == 'auto':
    return 'sgd' if config_checks.needs_pretrained(config.model.name) else 'adam'
  return name


def create_optimizer(config, steps_per_epoch, frozen=None):
  """SGD-Nesterov or Adam with coupled L2 weight decay (spec §7.1); frozen params get no update.
  `optim.head_lr_mult` != 1: the FCDD nets' last 1x1 conv (`final`) steps that many times as far (its updates
  scaled); `frozen` (a pytree of bools like the params) then also names the params."""
  o = config.optim
  lr = learning_rate_fn(config, steps_per_epoch)

  def base():
    if optimizer_name(config) == 'sgd':
      opt = optax.sgd(lr, momentum=o.momentum, nesterov=True)
    else:
      opt = optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)
    return optax.chain(optax.add_decayed_weights(o.weight_decay), opt) if o.weight_decay else opt

  mult = float(o.get('head_lr_mult', 1.0))
  if frozen is None or (mult == 1.0 and not any(jax.tree.leaves(frozen))):
    return base()
  paths = models.flax_traverse(frozen)
  labels = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(frozen), [
      'frozen' if f else ('head' if mult != 1.0 and path[0] == 'final' else 'train')
      for path, f in zip(paths, jax.tree.leaves(frozen))])
  transforms = {'train': base(), 'frozen': optax.set_to_zero()}   # the optimiser state of runs before the option
  if mult != 1.0:
    transforms['head'] = optax.chain(base(), optax.scale(mult))
  return optax.multi_transform(transforms, labels)


def init_variables(model, image_shape, rng):
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  return model.init({'params': rng, 'dropout': rng}, x, train=False)


def create_train_state(config, model, image_shape, rng, steps_per_epoch, pretrained=None):
  """Initial state from `rng`; `pretrained(variables) -> variables` replaces the initialised weights."""
  variables = init_variables(model, image_shape, rng)
  if pretrained is not None:
    variables = pretrained(variables)
  params = variables['params']
  frozen = models.frozen_mask(config.model.name, params)
  tx = create_optimizer(config, steps_per_epoch, frozen)
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           batch_stats=variables.get('batch_stats', {}))


def step_config(config, model, data, objective):
  """The static step settings of `model` on `data` (loss options, receptive field, HSC heatmap blur)."""
  counterpart = getattr(model, 'fcdd_counterpart', None)
  return StepConfig(
      objective=objective, gtmaps=bool(data.train_gtmaps and objective == 'fcdd'),
      reception=getattr(model, 'reception', None),
      gauss_std=float(config.loss.gauss_std),
      image_size=tuple(data.image_shape[:2]), stable=config.loss.stable,
      single_label_parity=config.loss.single_label_parity, blur=config.loss.blur_heatmaps,
      blur_r=models.reception(counterpart).r if counterpart else None,
      image_score_top=losses.parse_image_score(config.eval.get('image_score', 'mean')))


# ----------------------------------------------------------------------------------------------------
# The run

@dataclasses.dataclass
class Run:
  """What every entry point (one run, many runs, benchmarks) builds from a config and the data's shape."""
  model: Any
  objective: str
  step_config: StepConfig
  make_state: Callable[[Any], TrainState]   # rng -> TrainState (pretrained weights applied)
  pretrained: bool
  frozen: Any                               # mask of frozen params, or None
  mesh: Any                                 # Mesh(('data',)) over all devices
  replicated: Any                           # sharding of states: replicated
  data_sharding: Any                        # sharding of batches: rows split along 'data'

  def init_state(self, rng, sharding=None):
    """The initial TrainState placed with `sharding` (default: replicated; jitted, except when the weights
    are read from a file on the host)."""
    sharding = self.replicated if sharding is None else sharding
    if not self.pretrained:
      return jax.jit(self.make_state, out_shardings=sharding)(rng)
    return jax.device_put(self.make_state(rng), sharding)


def data_parallel_mesh():
  """Mesh(('data',)) over all devices of all processes."""
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))


def build_run(config, data, steps_per_epoch, model=None):
  """Model, objective, static step settings, state factory and mesh of a run (see the module doc). `data`:
  the pipeline's Info or a `DataShape`; `model`: an already built net (default: `create_model`)."""
  model = model or create_model(config, data)
  objective = config_checks.objective_for(config)
  pretrained = None
  if config.model.pretrained_path:
    from fcdd_jax.models import pretrained as pretrained_lib  # pylint: disable=g-import-not-at-top  (torch optional)
    pretrained = lambda v: pretrained_lib.apply_pretrained(config.model.name, v, config.model.pretrained_path)
  make_state = functools.partial(create_train_state, config, model, data.image_shape,
                                 steps_per_epoch=steps_per_epoch, pretrained=pretrained)
  shapes = jax.eval_shape(lambda: init_variables(model, data.image_shape, jax.random.PRNGKey(0)))['params']
  frozen = models.frozen_mask(config.model.name, shapes)
  mesh = data_parallel_mesh()
  return Run(model=model, objective=objective, step_config=step_config(config, model, data, objective),
             make_state=make_state, pretrained=pretrained is not None,
             frozen=frozen if any(jax.tree.leaves(frozen)) else None, mesh=mesh,
             replicated=NamedSharding(mesh, P()), data_sharding=NamedSharding(mesh, P('data')))

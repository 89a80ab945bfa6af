"""Config validation in one place: what can be checked before data is read (`check_config`) and what needs
the data's shape and size (`check_image_fits`, `total_steps`, `check_many_runs`).

Every failure is a `ConfigError` (a ValueError, exit code 2 in `main`) with a one-line message naming the
field, its value and what is allowed.
"""
import os

import jax

from fcdd_jax import losses
from fcdd_jax import models


class ConfigError(ValueError):
  """A configuration value that cannot work; the message names it and what is allowed."""


OPTIMIZERS = ('sgd', 'adam', 'auto')
SCHEDULES = ('lambda', 'milestones', 'constant')
OBJECTIVES = ('auto', 'fcdd', 'hsc', 'ae')
DTYPES = ('auto', 'float32', 'bfloat16')


def check_model_name(name):
  if name not in models.NAMES:
    raise ConfigError(f'config.model.name={name!r} is unknown; known nets: {", ".join(models.NAMES)}')


def objective_for(config):
  """The objective of the run: the net family's ('fcdd' | 'hsc' | 'ae'); config.objective may only confirm it."""
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


def needs_pretrained(name):
  """VGG nets start from ImageNet weights, except the `_NOPT` (from scratch) ones."""
  return name.startswith(('FCDD_CNN224_VGG', 'CNN224_VGG', 'AE224_VGG')) and 'NOPT' not in name


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
  try:
    top = losses.parse_image_score(config.eval.get('image_score', 'mean'))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if top is not None and objective_for(config) != 'fcdd':
    raise ConfigError(f'config.eval.image_score={config.eval.image_score!r} pools an FCDD heatmap; '
                      f'{config.model.name} ({objective_for(config)}) scores images its own way: use mean')
  if config.data.get('generated_maps', False) and config.data.supervise_mode != 'malformed_normal_gt':
    raise ConfigError(f'config.data.generated_maps=True trains on the maps of generated anomalies; it needs '
                      f'config.data.supervise_mode=malformed_normal_gt, not {config.data.supervise_mode!r}')
  gmin = config.data.get('gt_min_change', 0)
  if isinstance(gmin, bool) or not isinstance(gmin, int) or not 0 <= gmin < 255:
    raise ConfigError(f'config.data.gt_min_change={gmin!r}: expected an integer number of uint8 levels in 0..254')
  if config.model.dtype not in DTYPES:
    raise ConfigError(f'config.model.dtype={config.model.dtype!r}; allowed: {", ".join(DTYPES)}')
  name = config.model.name
  if needs_pretrained(name):
    if not config.model.pretrained_path:
      raise ConfigError(
          f'{name} starts from ImageNet-pretrained VGG11-BN weights but config.model.pretrained_path is '
          'empty; get torchvision\'s vgg11_bn-6002323d.pth (see README, "Pretrained weights"), convert it '
          'with `python -m fcdd_jax.pretrained --pth vgg11_bn-6002323d.pth --out vgg11_bn.npz` (or pass the .pth), '
          'then --config.model.pretrained_path=FILE, or '
          f'train from scratch with --config.model.name={name.replace("_F", "").split("_VGG")[0]}_VGG_NOPT')
    if not os.path.exists(config.model.pretrained_path):
      raise ConfigError(f'config.model.pretrained_path={config.model.pretrained_path!r}: no such file')


def check_image_fits(config, data):
  """The data's images (data.image_shape, data.name) have the net's nominal height and width."""
  name = config.model.name
  check_model_name(name)
  h, w, _ = models.input_shape(name)
  ih, iw, _ = data.image_shape
  if (ih, iw) != (h, w):
    raise ConfigError(
        f'images of data.name={data.name!r} are {ih}x{iw} but net {name!r} takes {h}x{w}; choose a net '
        f'for {ih}x{iw} inputs: ' + ', '.join(n for n in models.NAMES if models.input_shape(n)[:2] == (ih, iw)))


def total_steps(config, info):
  """Optimiser steps of the run: num_train_steps if > 0, else num_epochs x the data's steps per epoch."""
  spe = info.steps_per_epoch
  if spe <= 0:
    raise ConfigError(
        f'the training set of data.root={config.data.root!r} has no examples ({info.num_train} per epoch); '
        'check the folder layout (README, "Running experiments")')
  total = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * spe
  if total <= 0:
    raise ConfigError(
        f'no training steps: {info.num_train} training examples per epoch with batch_size='
        f'{config.batch_size} give {spe} steps/epoch; lower batch_size or set num_train_steps')
  return total


def check_many_runs(config, steps_per_epoch):
  """Many-runs mode (config.runs) shares one learning-rate schedule: equal steps per epoch unless constant."""
  if min(steps_per_epoch) <= 0:
    raise ConfigError(f'a run has fewer training examples than config.batch_size={config.batch_size}')
  if len(set(steps_per_epoch)) > 1 and config.optim.schedule != 'constant':
    raise ConfigError(
        f'config.runs: the runs have different steps per epoch ({sorted(set(steps_per_epoch))}); the per-epoch '
        f"{config.optim.schedule!r} schedule cannot be shared; use optim.schedule='constant' or separate runs")

"""Config validation in one place: what can be checked before data is read (`check_config`, run by `main`
before any work starts and again by each run driver: the net, objective, optimiser, batch and devices, the
data modes, `data.pollution`, `refine.*`), the comparison with the run a workdir already holds
(`check_resume`, called by `workdir.prepare` under the workdir's lock), and what needs the data's shape and
size (`check_image_fits`, `total_steps`, `check_many_runs`, `check_refine(num_train=...)`).

Every failure is a `ConfigError` (errors.py: a ValueError, exit code 2 in `main`) with a one-line message
naming the field, its value and what is allowed. The data layer's checks that need the files (layouts,
image sizes, class ranges) stay with the data and raise the same class.
"""
import json
import os

import jax

from fcdd_jax.models import losses
from fcdd_jax.models import nets as models
from fcdd_jax.data import anomalies
from fcdd_jax.data import checks as data_checks
from fcdd_jax.utils import workdir as workdir_lib
from fcdd_jax.utils.errors import ConfigError


OPTIMIZERS = ('sgd', 'adam', 'auto')
SCHEDULES = ('lambda', 'milestones', 'constant')
OBJECTIVES = ('auto', 'fcdd', 'hsc', 'ae')
DTYPES = ('auto', 'float32', 'bfloat16')
PRECISE_BN_DATA = ('images', 'stream')   # model.precise_bn_data


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
  check_data(config)
  check_patches(config)
  check_refine(config)
  if config.get('runs', ''):
    parse_runs(config.runs)
  check_model_name(config.model.name)
  objective_for(config)
  if config.optim.name not in OPTIMIZERS:
    raise ConfigError(f'config.optim.name={config.optim.name!r} is unknown; allowed: {", ".join(OPTIMIZERS)}')
  if not float(config.optim.get('head_lr_mult', 1.0)) > 0:
    raise ConfigError(f'config.optim.head_lr_mult={config.optim.head_lr_mult!r}: expected a number > 0 (1: the '
                      'head steps as far as the rest of the net)')
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
  for field, choices in (('figure_reference', ('upsampled', 'lowres')),
                         ('pixel_auc_resolution', ('original', 'input'))):
    if config.eval.get(field, choices[0]) not in choices:
      raise ConfigError(f'config.eval.{field}={config.eval[field]!r}: expected {" or ".join(choices)}')
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
  if config.model.get('precise_bn_data', 'images') not in PRECISE_BN_DATA:
    raise ConfigError(f'config.model.precise_bn_data={config.model.precise_bn_data!r}; allowed: '
                      f'{", ".join(PRECISE_BN_DATA)}')
  if config.model.dtype not in DTYPES:
    raise ConfigError(f'config.model.dtype={config.model.dtype!r}; allowed: {", ".join(DTYPES)}')
  name = config.model.name
  if needs_pretrained(name):
    if not config.model.pretrained_path:
      raise ConfigError(
          f'{name} starts from ImageNet-pretrained VGG11-BN weights but config.model.pretrained_path is '
          'empty; get torchvision\'s vgg11_bn-6002323d.pth (see README, "Pretrained weights"), convert it '
          'with `python -m fcdd_jax.pretrained --pth vgg11_bn-6002323d.pth --out vgg11_bn.npz` (or pass the .pth), '
          'then --config.model.pretrained_path=FILE; or make weights without ImageNet with '
          '`python -m fcdd_jax.pretrain --out vgg11_bn_cifar10.npz` (CIFAR-10); or '
          f'train from scratch with --config.model.name={name.replace("_F", "").split("_VGG")[0]}_VGG_NOPT')
    if not os.path.exists(config.model.pretrained_path):
      raise ConfigError(f'config.model.pretrained_path={config.model.pretrained_path!r}: no such file')


def check_data(config):
  """config.seed range; data.name, supervise_mode, noise_mode (OE sources only where the dataset loads them),
  data.pollution and online/offline supervision (spec §6)."""
  d = config.data
  if not 0 <= int(config.seed) < 2**32:
    raise ConfigError(f'config.seed={config.seed} is out of range: expected 0 <= seed < 2**32 (the random streams '
                      'of the data, data/streams.py, take it as one 32-bit word)')
  if d.name not in data_checks.DATASETS:
    raise ConfigError(f'config.data.name={d.name!r} is unknown; known datasets: {", ".join(data_checks.DATASETS)}')
  if d.supervise_mode not in data_checks.SUPERVISE_MODES:
    raise ConfigError(f'config.data.supervise_mode={d.supervise_mode!r} is unknown; allowed: '
                      + ', '.join(data_checks.SUPERVISE_MODES))
  allowed = data_checks.SUPERVISE_MODES_OF.get(d.name, data_checks.SUPERVISE_MODES)
  if d.supervise_mode not in allowed:
    raise ConfigError(f'config.data.supervise_mode={d.supervise_mode!r} is not available for {d.name} (spec §5.6: '
                      f'nominal images are not loaded when replaced); allowed: {", ".join(allowed)}')
  allowed = data_checks.PREPROCS.get(d.name)
  if allowed is not None and d.preproc not in allowed + data_checks.DEFAULT_PREPROC.get(d.name, ()):
    raise ConfigError(f'config.data.preproc={d.preproc!r} is not available for {d.name} data; allowed: '
                      f'{", ".join(allowed)}')
  generates = d.supervise_mode in data_checks.GENERATING_MODES
  modes = (anomalies.SYNTHETIC_MODES + (data_checks.OE_MODES if d.name in data_checks.OE_DATASETS else ())
           + (data_checks.TRUE_ANOMALY_MODES if d.name in ('mvtec', 'custom') else ()))
  if generates and d.noise_mode not in modes:
    raise ConfigError(f'config.data.noise_mode={d.noise_mode!r} is not available for data.name={d.name!r} with '
                      f'supervise_mode={d.supervise_mode!r}; allowed: ' + ', '.join(modes))
  if generates and d.noise_mode == 'folder' and not d.oe_root:
    raise ConfigError('config.data.noise_mode=folder needs --config.data.oe_root=<image folder>')
  data_checks.check_orientation(d)
  if pollution_ratio(d.get('pollution', 0.0)) > 0:
    if d.name not in data_checks.POLLUTION_DATASETS:
      raise ConfigError(f'config.data.pollution={d.pollution} is not available for {d.name}; datasets with known '
                        'anomalies to mix in: ' + ', '.join(data_checks.POLLUTION_DATASETS))
    if d.supervise_mode == 'other':
      raise ConfigError(f'config.data.pollution={d.pollution} needs an unlabelled (nominal-only) training set; '
                        "supervise_mode='other' trains on labelled anomalies")
  if not d.online_supervision:  # spec §6.3: where the reference supports offline supervision
    if d.name in ('imagenet', 'pascal_voc') and d.supervise_mode != 'unsupervised':
      raise ConfigError(f'config.data.online_supervision=False is not available for {d.name} with supervise_mode='
                        f'{d.supervise_mode!r} (spec §6.3: only unsupervised); use online supervision')
    if d.name == 'custom':
      raise ConfigError('config.data.online_supervision=False is not available for custom data (spec §6.3); use '
                        'online supervision')
    if generates and d.noise_mode in data_checks.TRUE_ANOMALY_MODES:
      raise ConfigError(f'config.data.online_supervision=False is not available with noise_mode={d.noise_mode!r} '
                        '(spec §6.3); use online supervision')


def pollution_ratio(ratio):
  """data.pollution as a float in [0, 1), or a one-line error naming the field."""
  try:
    r = float(ratio)
  except (TypeError, ValueError):
    r = float('nan')
  if not 0.0 <= r < 1.0:
    raise ConfigError(f'config.data.pollution={ratio!r} is out of range: expected the share of true anomalies in '
                      'the polluted training set, 0 <= share < 1 (0 = clean)')
  return r


def parse_drop(drop):
  """refine.drop as a float share in (0, 1) or the string 'auto'; a one-line ConfigError otherwise. Accepts the
  strings a command line gives ('0.1', 'auto')."""
  if isinstance(drop, str) and drop.strip().lower() == 'auto':
    return 'auto'
  try:
    p = float(drop)
  except (TypeError, ValueError):
    p = float('nan')
  if not 0.0 < p < 1.0:
    raise ConfigError(f"config.refine.drop={drop!r}: expected the share of training samples dropped per round, "
                      "0 < share < 1, or 'auto'")
  return p


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
    raise ConfigError(f"config.runs={spec!r}: expected 'CLASSESxSEEDS', e.g. '0-9x0-4' or '0,3x0'")
  return runs


def check_patches(config):
  """data.patch_size / data.scale (patch training at native resolution, data/patches.py): what it combines with."""
  d = config.data
  p, scale = d.get('patch_size', 0), d.get('scale', 1.0)
  if scale != 1.0 and not p:
    raise ConfigError(f'config.data.scale={scale} applies to patch training only; set config.data.patch_size')
  if not p:
    return
  if p < 0 or not scale > 0:
    raise ConfigError(f'config.data.patch_size={p}, data.scale={scale}: expected patch_size > 0 and scale > 0')
  name = config.model.name
  if name not in models.FCDD_NAMES:
    raise ConfigError(f'config.data.patch_size={p} needs an FCDD net (whole-image heatmaps); {name} is not one')
  j = models.reception(name).j
  if p % j:
    raise ConfigError(f'config.data.patch_size={p} is not a multiple of {name}\'s stride {j}; '
                      f'e.g. {max(j, p // j * j)}')
  refuse = {'data.name': d.name != 'custom', 'data.online_supervision=False': not d.online_supervision,
            'runs': bool(config.runs), 'refine.rounds': config.refine.rounds > 0,
            'model.precise_bn': config.model.precise_bn, 'data.pollution': pollution_ratio(d.get('pollution', 0.0)) > 0,
            f'data.noise_mode={d.noise_mode}': d.noise_mode in data_checks.TRUE_ANOMALY_MODES,
            'data.supervise_mode=other': d.supervise_mode == 'other'}
  bad = [k for k, v in refuse.items() if v]
  if bad:
    raise ConfigError(f'config.data.patch_size={p} works with data.name=custom (MVTec layout), online supervision '
                      f'and one run; not with {", ".join(bad)}')


def check_refine(config, num_train=None):
  """refine.rounds / subsets / drop, and what refinement cannot be combined with; with `num_train` (the
  training set's size, known once the data is read) also that every subset gets a sample.
  Returns (rounds, subsets, drop as a share or 'auto'; None when off)."""
  r = config.get('refine', None)
  if r is None:
    return 0, 0, None
  rounds, subsets, drop = r.rounds, r.subsets, r.drop
  if int(rounds) != rounds or rounds < 0:
    raise ConfigError(f'config.refine.rounds={rounds!r}: expected an integer >= 0 (0 = no refinement)')
  if rounds == 0:
    return 0, int(subsets), None
  if int(subsets) != subsets or subsets < 2:
    raise ConfigError(f'config.refine.subsets={subsets!r}: expected an integer >= 2 (each sample is scored by the '
                      'models that did not train on it)')
  drop = parse_drop(drop)
  if num_train is not None and num_train < subsets:
    raise ConfigError(f'config.refine.subsets={subsets} is more than the {num_train} training samples')
  d = config.data
  if not d.online_supervision:
    raise ConfigError('config.refine.rounds > 0 needs config.data.online_supervision=True: offline supervision '
                      'adds labelled anomalies to the training set that the refinement would score and drop')
  if d.supervise_mode == 'other':
    raise ConfigError("config.refine.rounds > 0 refines an unlabelled training set; supervise_mode='other' "
                      'trains on labelled anomalies')
  if config.runs:
    raise ConfigError('config.refine.rounds > 0 is one run; it cannot be combined with config.runs')
  return int(rounds), int(subsets), drop


def check_image_fits(config, data):
  """The data's images (data.image_shape, data.name) have the net's nominal height and width."""
  name = config.model.name
  check_model_name(name)
  if config.data.get('patch_size', 0):   # crops of any P (check_patches): the net takes any size
    return
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
        'check the folder layout (README, "Datasets")')
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


# ----------------------------------------------------------------------------------------------------
# A workdir that already holds a run

# Fields that may differ from config.json when a run is resumed: they change how long the run trains, how often
# it logs and saves, and how it is evaluated, not the model already in the checkpoints (model.dtype is the
# compute dtype only: params and optimiser state are float32 in both). Everything else
# (model.*, data.*, loss.*, optim.*, seed, batch_size, objective) is fixed for the life of a workdir.
MAY_CHANGE = ('num_epochs', 'num_train_steps', 'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
              'data.cache_dir', 'data.tfds_data_dir', 'model.dtype')
MAY_CHANGE_PREFIXES = ('eval.',)


def may_change(field):
  return field in MAY_CHANGE or field.startswith(MAY_CHANGE_PREFIXES)


def compare(old, new):
  """(refused, allowed, added) differences between two config dicts: lists of (field, old, new).

  `added` are fields missing from the old config.json (written by an older fcdd_jax); they are taken as their
  current value. Fields that disappeared are ignored."""
  a, b = workdir_lib.flatten(old), workdir_lib.flatten(new)
  refused, allowed, added = [], [], []
  for k in sorted(b):
    if k not in a:
      added.append((k, None, b[k]))
    elif a[k] != b[k]:
      (allowed if may_change(k) else refused).append((k, a[k], b[k]))
  return refused, allowed, added


def check_resume(config, workdir):
  """ConfigError when `config` differs from the trained run in `workdir` in a fixed field. Returns the allowed
  changes [(field, old, new)] (empty for a new workdir). `workdir.prepare` calls it under the lock."""
  path = os.path.join(workdir, workdir_lib.CONFIG_NAME)
  if not os.path.exists(path) or not workdir_lib.has_trained_model(workdir):
    return []
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f'{path} is unreadable ({e}); the workdir holds a trained run whose configuration is '
                      'unknown: use another --workdir, or --restart to move this run aside') from None
  refused, allowed, _ = compare(old, json.loads(workdir_lib.config_json(config)))
  if refused:
    raise ConfigError(
        f'the workdir {workdir} holds a run trained with another configuration '
        f'({workdir_lib.fmt_changes(refused)}); use a new --workdir, or add --restart to move the old run to '
        f'{workdir.rstrip(os.sep)}.old-<time> and train from scratch')
  return allowed

"""Names of the datasets and data modes (spec §6), and the class-range check every dataset shares.

The checks of these names against a config (dataset, supervision and noise modes, the preprocessing and
supervision each dataset offers) are `config_checks.check_data`, before any file is read; the datasets check
only what needs their data (class range `check_class`, layouts, image sizes) with the same `ConfigError`.
"""
from fcdd_jax.data import transforms
from fcdd_jax.utils.errors import ConfigError

DATASETS = ('demo', 'custom', 'mvtec', 'fmnist', 'cifar10', 'imagenet', 'pascal_voc')   # input_pipeline.LOADERS
OE_DATASETS = ('custom', 'mvtec', 'fmnist', 'cifar10', 'imagenet', 'pascal_voc')   # datasets that load OE images

SUPERVISE_MODES = ('unsupervised', 'other', 'noise', 'malformed_normal', 'malformed_normal_gt')
GENERATING_MODES = ('noise', 'malformed_normal', 'malformed_normal_gt')   # modes that make training anomalies
OE_MODES = ('folder', 'cifar100', 'emnist', 'imagenet', 'imagenet22k')     # data/oe.py
TRUE_ANOMALY_MODES = ('mvtec', 'mvtec_gt')                                 # data/mvtec.py, custom MVTec layout
POLLUTION_DATASETS = ('demo', 'custom', 'mvtec', 'fmnist', 'cifar10')     # data.pollution > 0 (data/pollution.py)
# config.data.preproc each dataset implements (spec §5; the demo has one fixed preprocessing and ignores it)
PREPROCS = {
    'custom': ('aug1', 'none'),     # the reference's custom runner (spec §5.9); '' and 'default' mean none
    'mvtec': ('lcnaug1', 'aug1'),
    'fmnist': ('lcnaug1', 'lcn', 'aug1', 'none'),
    'cifar10': ('lcnaug1', 'lcn', 'aug1', 'none', 'aug1_blackcenter', 'aug1_blackcenter_inverted'),
    'imagenet': ('aug1',),          # the reference's 'none' indexes the mean by class and is unusable (spec §10.5)
    'pascal_voc': ('aug1',),
}
DEFAULT_PREPROC = {'custom': ('', 'default')}   # values that mean the dataset's default preprocessing
# supervise modes where a dataset offers fewer than SUPERVISE_MODES: nominal images are not loaded when replaced
SUPERVISE_MODES_OF = {'imagenet': ('unsupervised', 'other', 'noise'), 'pascal_voc': ('unsupervised', 'other', 'noise')}


def check_class(config, num, names):
  """config.data.normal_class when it is in [0, num); else a ConfigError listing the classes."""
  c = config.data.normal_class
  if not 0 <= c < num:
    raise ConfigError(f'config.data.normal_class={c} is out of range for {config.data.name} '
                     f'({num} classes: 0..{num - 1} = {", ".join(names)})')
  return c


def check_orientation(d):
  """config.data.orientation: a known value, on custom data with preproc aug1 or none (ConfigError)."""
  orientation = d.get('orientation', '')
  if orientation not in transforms.ORIENTATIONS:
    raise ConfigError(f'config.data.orientation={orientation!r} is unknown; allowed: \'\' (the preprocessing\'s own), '
                      + ', '.join(transforms.ORIENTATIONS[1:]))
  if orientation and (d.name != 'custom' or d.preproc not in PREPROCS['custom']):
    raise ConfigError(f'config.data.orientation={orientation!r} works with data.name=custom and preproc '
                      f'{" or ".join(PREPROCS["custom"])} (got {d.name}, {d.preproc})')

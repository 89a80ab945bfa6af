"""Names of the datasets and data modes (spec §6), and the class-range check every dataset shares.

The checks of these names against a config are `config_checks.check_data` (before any file is read); the
datasets check their own preprocessing and class range (`check_class`) with the same `ConfigError`.
"""
from fcdd_jax.utils.errors import ConfigError

DATASETS = ('demo', 'custom', 'mvtec', 'fmnist', 'cifar10', 'imagenet', 'pascal_voc')   # input_pipeline.LOADERS
OE_DATASETS = ('custom', 'mvtec', 'fmnist', 'cifar10', 'imagenet', 'pascal_voc')   # datasets that load OE images

SUPERVISE_MODES = ('unsupervised', 'other', 'noise', 'malformed_normal', 'malformed_normal_gt')
GENERATING_MODES = ('noise', 'malformed_normal', 'malformed_normal_gt')   # modes that make training anomalies
OE_MODES = ('folder', 'cifar100', 'emnist', 'imagenet', 'imagenet22k')     # data/oe.py
TRUE_ANOMALY_MODES = ('mvtec', 'mvtec_gt')                                 # data/mvtec.py, custom MVTec layout
POLLUTION_DATASETS = ('demo', 'custom', 'mvtec', 'fmnist', 'cifar10')     # data.pollution > 0 (data/pollution.py)


def check_class(config, num, names):
  """config.data.normal_class when it is in [0, num); else a ConfigError listing the classes."""
  c = config.data.normal_class
  if not 0 <= c < num:
    raise ConfigError(f'config.data.normal_class={c} is out of range for {config.data.name} '
                     f'({num} classes: 0..{num - 1} = {", ".join(names)})')
  return c

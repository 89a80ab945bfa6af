"""Names of the data modes and the config checks every dataset shares (spec §6).

Datasets check their own preprocessing and class range with `check_class`; `check_common` runs once in
`input_pipeline.create` before any file is read, so a wrong mode fails in a second with a one-line message.
"""
from fcdd_jax.data import anomalies
from fcdd_jax.data import pollution

SUPERVISE_MODES = ('unsupervised', 'other', 'noise', 'malformed_normal', 'malformed_normal_gt')
GENERATING_MODES = ('noise', 'malformed_normal', 'malformed_normal_gt')   # modes that make training anomalies
OE_MODES = ('folder', 'cifar100', 'emnist', 'imagenet', 'imagenet22k')     # data/oe.py
TRUE_ANOMALY_MODES = ('mvtec', 'mvtec_gt')                                 # data/mvtec.py, custom MVTec layout
POLLUTION_DATASETS = ('demo', 'custom', 'mvtec', 'fmnist', 'cifar10')     # data.pollution > 0 (data/pollution.py)


def check_common(config, datasets):
  """config.seed range; dataset name in `datasets`, supervise_mode, noise_mode and online/offline supervision of config.data."""
  d = config.data
  if not 0 <= int(config.seed) < 2**32:
    raise ValueError(f'config.seed={config.seed} is out of range: expected 0 <= seed < 2**32 (the random streams of '
                     'the data, data/streams.py, take it as one 32-bit word)')
  if d.name not in datasets:
    raise ValueError(f'config.data.name={d.name!r} is unknown; known datasets: {", ".join(datasets)}')
  if d.supervise_mode not in SUPERVISE_MODES:
    raise ValueError(f'config.data.supervise_mode={d.supervise_mode!r} is unknown; allowed: '
                     + ', '.join(SUPERVISE_MODES))
  generates = d.supervise_mode in GENERATING_MODES
  modes = anomalies.SYNTHETIC_MODES + OE_MODES + (TRUE_ANOMALY_MODES if d.name in ('mvtec', 'custom') else ())
  if generates and d.noise_mode not in modes:
    raise ValueError(f'config.data.noise_mode={d.noise_mode!r} is not available for {d.name}; allowed: '
                     + ', '.join(modes))
  if generates and d.noise_mode == 'folder' and not d.oe_root:
    raise ValueError('config.data.noise_mode=folder needs --config.data.oe_root=<image folder>')
  if pollution.ratio_of(config) > 0:
    if d.name not in POLLUTION_DATASETS:
      raise ValueError(f'config.data.pollution={d.pollution} is not available for {d.name}; datasets with known '
                       'anomalies to mix in: ' + ', '.join(POLLUTION_DATASETS))
    if d.supervise_mode == 'other':
      raise ValueError(f'config.data.pollution={d.pollution} needs an unlabelled (nominal-only) training set; '
                       "supervise_mode='other' trains on labelled anomalies")
  if not d.online_supervision:  # spec §6.3: where the reference supports offline supervision
    if d.name in ('imagenet', 'pascal_voc') and d.supervise_mode != 'unsupervised':
      raise ValueError(f'config.data.online_supervision=False is not available for {d.name} with supervise_mode='
                       f'{d.supervise_mode!r} (spec §6.3: only unsupervised); use online supervision')
    if d.name == 'custom':
      raise ValueError('config.data.online_supervision=False is not available for custom data (spec §6.3); use '
                       'online supervision')
    if generates and d.noise_mode in TRUE_ANOMALY_MODES:
      raise ValueError(f'config.data.online_supervision=False is not available with noise_mode={d.noise_mode!r} '
                       '(spec §6.3); use online supervision')


def check_class(config, num, names):
  """config.data.normal_class when it is in [0, num); else a ValueError listing the classes."""
  c = config.data.normal_class
  if not 0 <= c < num:
    raise ValueError(f'config.data.normal_class={c} is out of range for {config.data.name} '
                     f'({num} classes: 0..{num - 1} = {", ".join(names)})')
  return c

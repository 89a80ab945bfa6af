"""fcdd_jax command line: one run = one nominal class and one seed.

  python -m fcdd_jax.main                                  # built-in demo on embedded data
  python -m fcdd_jax.main --config configs/cifar10.py --workdir runs/c10 --config.data.normal_class=3

Flags only; everything else happens in `train.train_and_evaluate`.
"""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_ROOT, 'configs')) and _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)  # so that configs/*.py can `from configs import default`
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
DEMO_CONFIG = os.path.join(_ROOT, 'configs', 'demo.py')

config_flags.DEFINE_config_file('config', None, 'Configuration file (configs/<name>.py); default: the demo.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Output directory (default: runs/<config>-<timestamp>).')
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0 (multi-host; jax.distributed).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host).')
flags.DEFINE_integer('process_id', None, 'This process (0 .. num_processes-1).')
flags.DEFINE_enum('distributed', 'off', ['off', 'auto'],
                  "'auto': let JAX detect TPU VMs / SLURM and initialise jax.distributed.")
flags.DEFINE_integer('initialization_timeout', 120, 'Seconds to wait for all processes to join.')
flags.DEFINE_integer('heartbeat_timeout', 60,
                     'Seconds after which a silent process counts as dead and all others stop with an error.')
flags.DEFINE_integer('shutdown_timeout', 60, 'Seconds a finishing process waits for the others at exit.')
flags.DEFINE_enum('keep_freed_memory', 'auto', ['auto', 'on', 'off'],
                  'glibc malloc keeps freed memory for reuse instead of unmapping it: XLA:CPU otherwise page-faults '
                  'its whole temporary space again at every step (CPU train steps 15-35% faster, bench/README.md; '
                  'the resident set stays at its peak). auto: on when no GPU/TPU device is visible.')


def _accelerator_visible():
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return any(p.strip() not in ('cpu', '') for p in platforms.split(','))
  import glob  # pylint: disable=g-import-not-at-top
  return bool(glob.glob('/dev/nvidia[0-9]*') or glob.glob('/dev/accel[0-9]*') or glob.glob('/dev/vfio/[0-9]*'))


def _hide_accelerators_from_tf():
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], 'GPU')
    tf.config.set_visible_devices([], 'TPU')
  except Exception:  # pylint: disable=broad-except
    pass


def _init_distributed():
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.coordinator_address or FLAGS.num_processes:
    if not (FLAGS.coordinator_address and FLAGS.num_processes and FLAGS.process_id is not None):
      raise ValueError('multi-host needs all of --coordinator_address, --num_processes and --process_id')
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
                               **_timeouts())
  elif FLAGS.distributed == 'auto':
    jax.distributed.initialize(**_timeouts())


def _timeouts():
  return dict(initialization_timeout=FLAGS.initialization_timeout,
              heartbeat_timeout_seconds=FLAGS.heartbeat_timeout,
              shutdown_timeout_seconds=FLAGS.shutdown_timeout)


def _load_config():
  if FLAGS.config is not None:
    _ = FLAGS.config.seed  # a config file that failed to load raises its error here
    return FLAGS.config, os.path.splitext(os.path.basename(flags.FLAGS['config'].config_filename))[0]
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('fcdd_demo_config', DEMO_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.lock()
  return config, 'demo'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.keep_freed_memory == 'on' or (FLAGS.keep_freed_memory == 'auto' and not _accelerator_visible()):
    from fcdd_jax import memory  # pylint: disable=g-import-not-at-top  (before any thread pool starts)
    memory.keep_freed_memory()
  logging.set_verbosity(logging.WARNING)
  try:
    config, name = _load_config()
  except Exception as e:  # pylint: disable=broad-except  (the user's config file: any error)
    path = flags.FLAGS['config'].config_filename if FLAGS['config'].present else DEMO_CONFIG
    if not os.path.exists(path.split(':')[0]):
      known = sorted(f[:-3] for f in os.listdir(os.path.join(_ROOT, 'configs')) if f.endswith('.py') and f[0] != '_')
      _error_exit(f'config file {path!r} does not exist; the shipped configs are configs/<name>.py with name in: '
                  + ', '.join(known))
    _error_exit(f'cannot load config file {path!r}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}')
  _hide_accelerators_from_tf()
  from fcdd_jax import train  # pylint: disable=g-import-not-at-top
  try:
    _init_distributed()
    from fcdd_jax import checkpointing  # pylint: disable=g-import-not-at-top
    checkpointing.install_sigterm_handler()
    workdir = FLAGS.workdir or train.default_workdir(name)
    if config.runs:
      from fcdd_jax import multirun  # pylint: disable=g-import-not-at-top
      multirun.train_and_evaluate_runs(config, workdir)
    else:
      train.train_and_evaluate(config, workdir)
  except (ValueError, FileNotFoundError, NotADirectoryError, KeyError, FloatingPointError) as e:
    # Bad input: one line naming the value and what is allowed, non-zero exit, no traceback wall.
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if os.environ.get('FCDD_DEBUG'):
      raise
    _error_exit(msg, 2 if not isinstance(e, FloatingPointError) else 3)


def _error_exit(msg, code=2):
  print(f'fcdd_jax: error: {msg}', file=sys.stderr, flush=True)
  sys.exit(code)


def parse_flags(argv):
  """absl flag parsing with one-line errors (unknown config fields, bad values, missing files)."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    key = str(e).strip('\'"')
    bad = [a for a in argv[1:] if a.startswith('--config.') and key and key in a.split('=')[0]]
    where = bad[0].split('=')[0][2:] if bad else key
    _error_exit(f'unknown config field {where!r}: not declared in configs/default.py (check the spelling; '
                'fields are e.g. config.optim.lr, config.data.normal_class)')
  except flags.Error as e:
    _error_exit(str(e).strip().splitlines()[0])
  except (OSError, ImportError, SyntaxError, TypeError, ValueError) as e:
    _error_exit(f'cannot load the config: {str(e).strip().splitlines()[0]}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)

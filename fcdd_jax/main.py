"""fcdd_jax command line: one run = one nominal class and one seed.

  python -m fcdd_jax.main                                  # built-in demo on embedded data
  python -m fcdd_jax.main --config configs/cifar10.py --workdir runs/c10 --config.data.normal_class=3
  python -m fcdd_jax.main --config cifar10 ...             # the same shipped config by name (any directory)

--config takes a file (`configs/<name>.py` in a checkout, or any path), or the name of a shipped config
(`fcdd_jax/configs/<name>.py`, also inside an installed wheel). Flags only; everything else happens in
`train.train_and_evaluate` (or `multirun.train_and_evaluate_runs` with config.runs).
"""
import contextlib
import errno
import logging as logging_std
import os
import re
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

from fcdd_jax import memory

FLAGS = flags.FLAGS
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')   # the shipped configs
DEMO_CONFIG = os.path.join(CONFIG_DIR, 'demo.py')

config_flags.DEFINE_config_file(
    'config', None, 'Configuration file (configs/<name>.py or any path) or the name of a shipped config '
    '(e.g. cifar10); default: the demo.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Output directory (default: runs/<config>-<timestamp>).')
flags.DEFINE_bool('restart', False, 'Move an existing run in --workdir aside to <workdir>.old-<time> (nothing is '
                  'deleted) and train from scratch: for a changed model/data configuration or damaged checkpoints.')
flags.DEFINE_bool('verbose', False, 'Full tracebacks and library log lines (also: environment FCDD_DEBUG=1).')
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0 (multi-host; jax.distributed).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host).')
flags.DEFINE_integer('process_id', None, 'This process (0 .. num_processes-1).')
flags.DEFINE_enum('distributed', 'off', ['off', 'auto'],
                  "'auto': let JAX detect TPU VMs / SLURM and initialise jax.distributed.")
flags.DEFINE_integer('initialization_timeout', 120, 'Seconds to wait for all processes to join.')
flags.DEFINE_integer('heartbeat_timeout', 60,
                     'Seconds after which a silent process counts as dead and all others stop with an error.')
flags.DEFINE_integer('shutdown_timeout', 60, 'Seconds a finishing process waits for the others at exit.')
flags.DEFINE_enum('allocator', 'auto', list(memory.ALLOCATORS),
                  "Process allocator. auto: mimalloc when no GPU/TPU is visible (XLA:CPU's per-step buffers are "
                  "reused instead of page-faulted in again, with a bounded resident set; fcdd_jax/memory.py), else "
                  "glibc's. The command re-executes itself once with mimalloc preloaded.")


def _accelerator_visible():
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return any(p.strip() not in ('cpu', '') for p in platforms.split(','))
  import glob  # pylint: disable=g-import-not-at-top
  return bool(glob.glob('/dev/nvidia[0-9]*') or glob.glob('/dev/accel[0-9]*') or glob.glob('/dev/vfio/[0-9]*'))


def _hide_accelerators_from_tf(quiet=True):
  try:
    with _native_stderr_silenced(quiet):  # TF's C++ start-up banners (oneDNN, absl::InitializeLog) x2
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], 'GPU')
    tf.config.set_visible_devices([], 'TPU')
  except Exception:  # pylint: disable=broad-except
    pass


@contextlib.contextmanager
def _native_stderr_silenced(quiet):
  """Points file descriptor 2 at /dev/null (C++ libraries write there directly); Python errors still raise."""
  if not quiet:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, 'w') as null:
      os.dup2(null.fileno(), 2)
      yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def _verbose():
  return bool(FLAGS.verbose or os.environ.get('FCDD_DEBUG', '') not in ('', '0'))


class _QuietLogFilter(logging_std.Filter):
  """Without --verbose: library log records become one line each, printed once; orbax's own error records
  (with tracebacks) are dropped because the failure reaches the user as one `fcdd_jax: error:` line."""

  def __init__(self):
    super().__init__()
    self.seen = set()

  def filter(self, record):
    if f'{os.sep}orbax{os.sep}' in (record.pathname or ''):
      return False
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    key = (record.levelno, record.getMessage())
    if key in self.seen:
      return False
    self.seen.add(key)
    return True


class _OneLineFormatter(logging_std.Formatter):
  def format(self, record):
    return f'{record.levelname.lower()}: {record.getMessage()}'


def _setup_logging(verbose):
  logging.set_verbosity(logging.WARNING)
  if verbose:
    return
  handler = logging.get_absl_handler()
  handler.addFilter(_QuietLogFilter())
  handler.setFormatter(_OneLineFormatter())


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
    _error_exit(f'unexpected arguments: {" ".join(argv[1:])} (flags are --name=value; see --help)')
  if os.path.abspath(sys.argv[0]) == os.path.abspath(__file__):  # a command, not a call from Python
    try:  # before any thread pool starts; replaces this process when it preloads mimalloc
      memory.exec_with_allocator(FLAGS.allocator, _accelerator_visible())
    except ValueError as e:
      _error_exit(str(e))
  verbose = _verbose()
  _setup_logging(verbose)
  if _DEFAULTED['config']:   # (here, after a possible re-exec, so that it is said once)
    print('fcdd_jax: no --config given: the --config.* overrides apply to the demo config (configs/demo.py)',
          flush=True)
  try:
    config, name = _load_config()
  except Exception as e:  # pylint: disable=broad-except  (the user's config file: any error)
    if verbose:
      raise
    path = flags.FLAGS['config'].config_filename if FLAGS['config'].present else DEMO_CONFIG
    if not os.path.exists(path.split(':')[0]):
      _error_exit(f'config file {path!r} does not exist; the shipped configs are configs/<name>.py (or just '
                  '<name>) with name in: ' + ', '.join(shipped_configs()))
    _error_exit(f'cannot load config file {path!r}: {type(e).__name__}: {_first_line(e)}')
  _hide_accelerators_from_tf(quiet=not verbose)
  from fcdd_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from fcdd_jax import train  # pylint: disable=g-import-not-at-top
  from fcdd_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from fcdd_jax import workdir_lock  # pylint: disable=g-import-not-at-top
  try:
    _init_distributed()
    checkpointing.install_sigterm_handler()
    workdir = FLAGS.workdir or train.default_workdir(name)
    if FLAGS.restart:
      _restart(workdir, workdir_lib)
    if config.get('refine') and config.refine.rounds:   # training-data refinement (issue 16)
      from fcdd_jax import refine_run  # pylint: disable=g-import-not-at-top
      refine_run.train_and_evaluate(config, workdir)
    elif config.runs:
      from fcdd_jax import multirun  # pylint: disable=g-import-not-at-top
      _lock_for_multirun(workdir, workdir_lib)
      multirun.train_and_evaluate_runs(config, workdir)
    else:
      train.train_and_evaluate(config, workdir)
  except KeyboardInterrupt:
    _finish_pending(checkpointing)
    _error_exit('interrupted; rerun the same command to resume from the last checkpoint', 130)
  except Exception as e:  # pylint: disable=broad-except  (every failure: one line, or a traceback if verbose)
    _finish_pending(checkpointing)
    if verbose:
      raise
    msg, code = _describe(e)
    _error_exit(msg, code)
  finally:
    workdir_lock.release_all()


def _first_line(e):
  return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _describe(e):
  """(one-line message, exit code): 2 bad configuration/input, 3 non-finite training, 4 the file system
  (disk full, unwritable), 1 anything unexpected."""
  if isinstance(e, FloatingPointError):
    return _first_line(e), 3
  if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
    return _first_line(e), 2
  if isinstance(e, OSError):
    if e.strerror and e.filename:   # a plain OSError from open()/makedirs(): say which file and why
      return f'cannot write or read {e.filename}: {e.strerror}', 4
    if e.errno == errno.ENOSPC:     # a write into an already open file
      return f'no space left on the device while writing into {FLAGS.workdir or "the workdir"}', 4
    return _first_line(e), 4
  if isinstance(e, KeyError):
    return f'missing key {e.args[0]!r}' if e.args else 'KeyError', 2
  if isinstance(e, ValueError):
    return _first_line(e), 2
  return (f'unexpected {type(e).__name__}: {_first_line(e)[:300]} (rerun with --verbose for the traceback)', 1)


def _finish_pending(checkpointing):
  """An aborted run: let its in-flight checkpoint save end (or clean up after it) before exiting."""
  try:
    for m in checkpointing.finish_pending():
      print(f'fcdd_jax: warning: {m}', file=sys.stderr, flush=True)
  except Exception:  # pylint: disable=broad-except  (already exiting with the first error)
    pass


def _restart(workdir, workdir_lib):
  """--restart: process 0 moves the old run aside; all processes then start from scratch."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    dest = workdir_lib.move_aside(workdir)
    if dest:
      print(f'fcdd_jax: --restart: moved the previous run to {dest}; training from scratch', flush=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('fcdd_jax_restart')


def _lock_for_multirun(workdir, workdir_lib):
  import jax  # pylint: disable=g-import-not-at-top
  from fcdd_jax import workdir_lock  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    workdir_lib.check_path(workdir)
    workdir_lock.Lock.acquire(workdir)


def _error_exit(msg, code=2):
  print(f'fcdd_jax: error: {msg}', file=sys.stderr, flush=True)
  sys.exit(code)


def shipped_configs():
  """Names of the configs shipped in the package (fcdd_jax/configs/<name>.py)."""
  return sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith('.py') and f[0] != '_')


def resolve_config_path(value):
  """--config value -> config file: an existing path as given; else a shipped config named `<name>`,
  `configs/<name>.py` or `fcdd_jax/configs/<name>.py` (a wheel installed outside a checkout). Anything
  else is returned unchanged (the error then names it). An optional `:arg` suffix is kept."""
  path, sep, arg = value.partition(':')
  if os.path.exists(path):
    return value
  m = re.fullmatch(r'(?:(?:fcdd_jax/)?configs/)?(\w+)(?:\.py)?', path)
  if m and os.path.exists(os.path.join(CONFIG_DIR, m.group(1) + '.py')):
    return os.path.join(CONFIG_DIR, m.group(1) + '.py') + sep + arg
  return value


def _with_default_config(argv):
  """--config by name resolved to its file; `--config.x=...` without `--config`: the overrides apply to the
  demo config (as a bare run does)."""
  argv = list(argv)
  for i, a in enumerate(argv[1:], 1):
    m = re.match(r'^(--?config=)(.*)$', a)
    if m:
      argv[i] = m.group(1) + resolve_config_path(m.group(2))
    elif re.match(r'^--?config$', a) and i + 1 < len(argv):
      argv[i + 1] = resolve_config_path(argv[i + 1])
  has_override = any(re.match(r'^--?(no)?config\.', a) for a in argv[1:])
  has_config = any(re.match(r'^--?config(=|$)', a) for a in argv[1:])
  _DEFAULTED['config'] = has_override and not has_config
  if _DEFAULTED['config']:
    return argv[:1] + [f'--config={DEMO_CONFIG}'] + argv[1:]
  return argv


_DEFAULTED = {'config': False}


def parse_flags(argv):
  """absl flag parsing with one-line errors (unknown config fields, bad values, missing files)."""
  argv = _with_default_config(list(argv))
  sys.argv[:] = argv   # config_flags reads the overrides to define from sys.argv
  if FLAGS.is_parsed():  # parsed before in this process (tests, programmatic use): start from a clean slate
    FLAGS.unparse_flags()
    for name in [n for n in FLAGS if n.startswith('config.')]:
      delattr(FLAGS, name)
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    _error_exit(_unknown_field_message(e, argv))
  except flags.Error as e:
    _error_exit(_first_line(e))
  except (OSError, ImportError, SyntaxError, TypeError, ValueError) as e:
    _error_exit(f'cannot load the config: {_first_line(e)}')


def _unknown_field_message(e, argv):
  """ml_collections' KeyError text is repr-quoted with an embedded newline and a suggestion; say it plainly:
  unknown config field 'config.batch_sise' (did you mean 'config.batch_size'?)."""
  while e.args and isinstance(e.args[0], BaseException):   # AttributeError(KeyError('...'))
    e = e.args[0]
  text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
  key = re.match(r"""\s*['"]?([^'"\n]*)""", text).group(1)
  suggestion = re.search(r'Did you mean "([^"]+)"', text)
  names = [a.split('=', 1)[0].lstrip('-') for a in argv[1:] if re.match(r'^--?config\.', a)]
  hits = [n for n in names if key and key in n.split('.')] or [n for n in names if key and key in n]
  field = hits[0] if hits else (f'config.{key}' if key else 'config.?')
  hint = ''
  if suggestion:
    parts = field.split('.')
    if key in parts:
      parts[parts.index(key)] = suggestion.group(1)
    hint = f" (did you mean '{'.'.join(parts)}'?)"
  return (f"unknown config field '{field}'{hint}: not declared in configs/default.py (fields are e.g. "
          'config.optim.lr, config.data.normal_class)')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)

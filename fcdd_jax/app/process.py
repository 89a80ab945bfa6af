"""The process around a run: allocator re-execution, TensorFlow kept off accelerators, one-line logging,
multi-host start-up, and every failure turned into one `fcdd_jax: error:` line with its exit code.

Exit codes (README, "Exit codes"): 0 done, 1 unexpected (a bug: rerun with --verbose), 2 bad configuration or
input (config field/value/file, data layout, a workdir in use or holding another run), 3 non-finite training,
4 the file system (a workdir or file that cannot be created, read or written; disk full), 130 interrupted.
"""
import contextlib
import errno
import glob
import logging as logging_std
import os
import sys

from absl import logging

from fcdd_jax.utils import memory
# the exit codes (README "Exit codes"), defined once in utils/errors
from fcdd_jax.utils.errors import (EXIT_CONFIG, EXIT_FILE_SYSTEM, EXIT_INTERRUPTED,  # pylint: disable=unused-import
                                   EXIT_NON_FINITE, EXIT_UNEXPECTED)


def error_exit(msg, code=EXIT_CONFIG):
  print(f'fcdd_jax: error: {msg}', file=sys.stderr, flush=True)
  sys.exit(code)


def first_line(e):
  return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def describe(e, workdir=None):
  """(one-line message, exit code) of an exception that ends a run (module doc)."""
  if getattr(e, 'exit_code', None):   # errors that carry their code (errors.py, workdir_lock.WorkdirAccessError)
    return first_line(e), e.exit_code
  if isinstance(e, FloatingPointError):   # train_log.NonFiniteError
    return first_line(e), EXIT_NON_FINITE
  if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
    return first_line(e), EXIT_CONFIG
  if isinstance(e, OSError):
    if e.strerror and e.filename:   # a plain OSError from open()/makedirs(): say which file and why
      return f'cannot write or read {e.filename}: {e.strerror}', EXIT_FILE_SYSTEM
    if e.errno == errno.ENOSPC:     # a write into an already open file
      return f'no space left on the device while writing into {workdir or "the workdir"}', EXIT_FILE_SYSTEM
    return first_line(e), EXIT_FILE_SYSTEM
  if isinstance(e, KeyError):
    return (f'missing key {e.args[0]!r}' if e.args else 'KeyError'), EXIT_CONFIG
  if isinstance(e, ValueError):
    return first_line(e), EXIT_CONFIG
  return (f'unexpected {type(e).__name__}: {first_line(e)[:300]} (rerun with --verbose for the traceback)',
          EXIT_UNEXPECTED)


def verbose(flag):
  return bool(flag or os.environ.get('FCDD_DEBUG', '') not in ('', '0'))


# ----------------------------------------------------------------------------------------------------
# Allocator, TensorFlow, logging, multi-host

def accelerator_visible():
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return any(p.strip() not in ('cpu', '') for p in platforms.split(','))
  return bool(glob.glob('/dev/nvidia[0-9]*') or glob.glob('/dev/accel[0-9]*') or glob.glob('/dev/vfio/[0-9]*'))


def use_allocator(choice):
  """--allocator: re-executes the command with mimalloc preloaded when that is the choice (before any thread
  pool starts; replaces this process); a missing allocator package is a one-line error."""
  try:
    memory.exec_with_allocator(choice, accelerator_visible())
  except ValueError as e:
    error_exit(str(e))


class QuietLogFilter(logging_std.Filter):
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


class OneLineFormatter(logging_std.Formatter):
  def format(self, record):
    return f'{record.levelname.lower()}: {record.getMessage()}'


def setup_logging(is_verbose):
  """Library log records as one line each (QuietLogFilter, OneLineFormatter); without --verbose a handler
  that cannot write (a stream closed while a library's background thread still logs, at exit or under a
  test's capture) stays silent instead of printing Python's '--- Logging error ---' traceback."""
  logging.set_verbosity(logging.WARNING)
  if is_verbose:
    return
  logging_std.raiseExceptions = False
  handler = logging.get_absl_handler()
  handler.addFilter(QuietLogFilter())
  handler.setFormatter(OneLineFormatter())


class NoDeviceError(RuntimeError):
  """JAX has no usable device for the platforms asked for (exit code 2)."""
  exit_code = EXIT_CONFIG


def init_distributed(coordinator_address, num_processes, process_id, mode, **timeouts):
  """jax.distributed for an explicit coordinator (all three flags) or `mode='auto'` (TPU VMs, SLURM); then
  the devices, or a one-line NoDeviceError when JAX cannot start the platforms JAX_PLATFORMS names."""
  import jax  # pylint: disable=g-import-not-at-top
  if coordinator_address or num_processes:
    if not (coordinator_address and num_processes and process_id is not None):
      raise ValueError('multi-host needs all of --coordinator_address, --num_processes and --process_id')
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, **timeouts)
  elif mode == 'auto':
    jax.distributed.initialize(**timeouts)
  try:
    return jax.devices()
  except Exception as e:  # pylint: disable=broad-except  (jax raises RuntimeError, or AssertionError in 0.10)
    raise NoDeviceError(
        f"JAX found no usable device for JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS', '')!r} "
        f'({type(e).__name__}: {first_line(e)}); install the accelerator wheel (pip install -U "jax[cuda12]" '
        'for NVIDIA GPUs, "jax[tpu]" on TPU VMs) or unset JAX_PLATFORMS to run on the CPU') from e


def finish_pending():
  """An aborted run: let its in-flight checkpoint save end (or clean up after it) before exiting."""
  try:
    from fcdd_jax.utils import checkpointing  # pylint: disable=g-import-not-at-top
    for m in checkpointing.finish_pending():
      print(f'fcdd_jax: warning: {m}', file=sys.stderr, flush=True)
  except Exception:  # pylint: disable=broad-except  (already exiting with the first error)
    pass


def restart(workdir):
  """--restart: process 0 moves the old run aside; all processes then start from scratch."""
  import jax  # pylint: disable=g-import-not-at-top
  from fcdd_jax.utils import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    dest = workdir_lib.move_aside(workdir)
    if dest:
      print(f'fcdd_jax: --restart: moved the previous run to {dest}; training from scratch', flush=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('fcdd_jax_restart')


@contextlib.contextmanager
def run_guard(is_verbose, workdir):
  """Around the run: Ctrl-C -> exit 130, any failure -> one line and its exit code (a traceback when
  verbose); pending checkpoint saves finish and workdir locks are released either way."""
  from fcdd_jax.utils import workdir_lock  # pylint: disable=g-import-not-at-top
  try:
    yield
  except KeyboardInterrupt:
    finish_pending()
    error_exit('interrupted; rerun the same command to resume from the last checkpoint', EXIT_INTERRUPTED)
  except Exception as e:  # pylint: disable=broad-except  (every failure: one line, or a traceback if verbose)
    finish_pending()
    if is_verbose:
      raise
    error_exit(*describe(e, workdir))
  finally:
    workdir_lock.release_all()

"""Orbax/TensorStore failure noise: short one-line errors, and filters for the debris a failed read or write
leaves on stderr.

A damaged checkpoint or a failed save makes orbax's TensorStore I/O raise errors carrying kilobytes of spec,
and leaves collected coroutines, closed-loop callbacks and 'never retrieved' futures that Python reports as
thousands of lines. `checkpointing` reports each failure once, in one line (`short_error`); this module
drops exactly that debris (`install_debris_filters`, `quiet_unraisable`, `quiet_absl`) and lets every other
report through.
"""
import contextlib
import gc
import logging
import sys
import traceback
import warnings


def short_error(e, limit=160):
  """First line of an exception, shortened (TensorStore errors carry kilobytes of spec)."""
  text = str(e).strip().splitlines()[0] if str(e).strip() else ''
  text = text.split(' See full TensorStore details')[0]
  if text.startswith('Encountered error while reading array index'):
    text = 'its array data cannot be read'
  return (text[:limit] + ' ...') if len(text) > limit else text


def _is_debris(obj, exc):
  """Orbax runs TensorStore reads/writes on short-lived asyncio loops: after a failure the dropped coroutines
  are collected ('Exception ignored in: <coroutine ...>', thousands of lines) and TensorStore's completion
  callbacks find their loop closed ('RuntimeError: Event loop is closed' tracebacks). Nothing to act on."""
  return type(obj).__name__ == 'coroutine' or (isinstance(exc, RuntimeError) and 'Event loop is closed' in str(exc))


_FILTERS = {'installed': False}


def install_debris_filters():
  """Drops exactly `_is_debris` reports from sys.unraisablehook and sys.excepthook (TensorStore reports
  callback errors through the latter); everything else still goes to the previous hooks. Idempotent."""
  if _FILTERS['installed']:
    return
  _FILTERS['installed'] = True
  old_unraisable, old_except = sys.unraisablehook, sys.excepthook
  def unraisable(u):
    if not _is_debris(u.object, u.exc_value):
      old_unraisable(u)
  def excepthook(tp, value, tb):
    if not _is_debris(None, value):
      old_except(tp, value, tb)
  sys.unraisablehook, sys.excepthook = unraisable, excepthook
  warnings.filterwarnings('ignore', message="coroutine '_read_array.*' was never awaited", category=RuntimeWarning)
  logging.getLogger('asyncio').addFilter(_not_orbax_never_retrieved)


def _not_orbax_never_retrieved(record):
  """asyncio logs 'Future/Task exception was never retrieved' (with a kilobyte TensorStore spec) for the other
  writers of a failed orbax save when they are collected; the failure itself is reported once."""
  msg = record.getMessage()
  if 'never retrieved' not in msg:
    return True
  if 'orbax' in msg:
    return False
  exc = record.exc_info[1] if record.exc_info else None
  while exc is not None:
    if any('orbax' in f.filename for f in traceback.extract_tb(exc.__traceback__)):
      return False
    exc = exc.__context__
  return True


@contextlib.contextmanager
def quiet_unraisable():
  """A restore that may fail: its debris is filtered (also when a test runner swapped the hooks) and, when it
  failed, collected before the error leaves. (Not after a success, which leaves no debris: a full collection costs
  up to a second in a large process, and every training resume, prediction and export restores.)"""
  old = sys.unraisablehook
  def hook(u):
    if not _is_debris(u.object, u.exc_value):
      old(u)
  sys.unraisablehook = hook
  try:
    with warnings.catch_warnings():
      warnings.filterwarnings('ignore', message='coroutine .* was never awaited', category=RuntimeWarning)
      try:
        yield
      except BaseException:
        gc.collect()
        raise
  finally:
    sys.unraisablehook = old


@contextlib.contextmanager
def quiet_absl():
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  old = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(old)

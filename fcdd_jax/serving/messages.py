"""What the inference commands (`fcdd_jax.predict`, `fcdd_jax.export`) share: exit codes, one-line errors and
warnings in the package's `prog: warning: ...` style.

Exit codes (README, "Exit codes"): 0 done, 1 nothing could be done (e.g. no input image decoded),
2 bad input (flags, run, images), 4 file system (--output a file, under a file, unwritable, in use or not empty; disk full).
"""
import contextlib
import logging
import sys

from fcdd_jax.utils.errors import EXIT_CONFIG as EXIT_BAD_INPUT
from fcdd_jax.utils.errors import EXIT_FILE_SYSTEM  # pylint: disable=unused-import
from fcdd_jax.utils.errors import EXIT_OK
from fcdd_jax.utils.errors import EXIT_UNEXPECTED as EXIT_NOTHING_DONE


def error(prog, msg, code):
  """Prints `prog: error: msg` (one line) on stderr and returns `code` (for `return cli.error(...)`)."""
  print(f'{prog}: error: {msg}', file=sys.stderr, flush=True)
  return code


def warn(prog, msg):
  print(f'{prog}: warning: {msg}', file=sys.stderr, flush=True)


def os_error_message(e):
  """One line for an OSError raised while writing: the file and the reason."""
  where = f' {e.filename}' if getattr(e, 'filename', None) else ''
  return f'cannot write{where}: {e.strerror or e}'


class _OneLine(logging.Formatter):

  def __init__(self, prog):
    super().__init__()
    self.prog = prog

  def format(self, record):
    return f'{self.prog}: {record.levelname.lower()}: {record.getMessage()}'


class _CurrentStderr(logging.StreamHandler):
  """A handler that writes to the `sys.stderr` of the moment it emits, not the stream it was made with (which a
  caller may have swapped and closed since: a test's capture, a redirected notebook cell)."""

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):  # (StreamHandler.__init__ assigns it)
    pass


@contextlib.contextmanager
def one_line_logging(prog):
  """For the duration of a command: library warnings (e.g. image_io naming skipped files) as one
  `prog: warning: ...` line each on stderr, instead of Python's `WARNING:root:` form. Plain stderr handlers of
  the root logger (logging.basicConfig) are set aside meanwhile; our handler is present before the libraries
  load, so their own basicConfig() does nothing. Afterwards the root logger is as it was: no handler of a
  finished command is left behind for later log records (e.g. a checkpoint library's background threads)."""
  handler = _CurrentStderr()
  handler.setFormatter(_OneLine(prog))
  root = logging.getLogger()
  set_aside = [h for h in root.handlers if type(h) is logging.StreamHandler]  # pylint: disable=unidiomatic-typecheck
  level = root.level
  for h in set_aside:
    root.removeHandler(h)
  root.addHandler(handler)
  root.setLevel(logging.WARNING)
  try:
    yield
  finally:
    root.removeHandler(handler)
    root.setLevel(level)
    for h in set_aside:
      root.addHandler(h)

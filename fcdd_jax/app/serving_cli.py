"""What the inference commands (`fcdd_jax.predict`, `fcdd_jax.export`) share: exit codes, one-line errors and
warnings in the package's `prog: warning: ...` style.

Exit codes (README, "Exit codes"): 0 done, 1 nothing could be done (e.g. no input image decoded),
2 bad input (flags, run, images), 4 file system (--output a file, under a file, unwritable, in use or not empty; disk full).
"""
import logging
import sys

EXIT_OK, EXIT_NOTHING_DONE, EXIT_BAD_INPUT, EXIT_FILE_SYSTEM = 0, 1, 2, 4


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


def setup_logging(prog):
  """Library warnings (e.g. image_io naming skipped files) as one `prog: warning: ...` line each on stderr,
  instead of Python's `WARNING:root:` form."""
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(_OneLine(prog))
  root = logging.getLogger()
  for h in list(root.handlers):   # plain stderr handlers (an earlier call, logging.basicConfig); test capture stays
    if type(h) is logging.StreamHandler:  # pylint: disable=unidiomatic-typecheck
      root.removeHandler(h)
  root.addHandler(handler)   # present before the libraries load: their logging.basicConfig() then does nothing
  root.setLevel(logging.WARNING)


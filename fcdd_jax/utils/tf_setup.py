"""TensorFlow, imported only where a run needs it (tensorflow-datasets sets, the SavedModel writer), once:
quietly (its C++ start-up lines go to /dev/null unless the environment has FCDD_DEBUG=1) and with GPUs and TPUs hidden
from it, so that it never takes accelerator memory from JAX. Runs on folders of images or the demo data never
import it (7.5 s and ~480 MB of peak memory here; utils/summaries.py writes TensorBoard's files without it)."""
import contextlib
import functools
import os
import sys


@functools.cache
def tensorflow():
  """The `tensorflow` module, set up as above (call before importing tensorflow_datasets). TensorFlow reads its
  logging variables once, when it loads: no INFO/WARNING log lines later either (TF_CPP_MIN_LOG_LEVEL=3) and no
  oneDNN notice (TF_ENABLE_ONEDNN_OPTS=0: fcdd_jax computes with JAX; TensorFlow only reads tfds data and writes
  SavedModels). A user's own values of the variables are kept."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  with native_stderr_silenced(os.environ.get('FCDD_DEBUG', '') in ('', '0')):  # oneDNN, absl::InitializeLog x2
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
    tf.config.set_visible_devices([], 'TPU')
  except Exception:  # pylint: disable=broad-except  (no such device type in this build)
    pass
  return tf


@contextlib.contextmanager
def native_stderr_silenced(quiet):
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

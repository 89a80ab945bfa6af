"""utils/tf_setup: TensorFlow imported quietly, its logging variables set before it loads, user values kept."""
import json
import os
import subprocess
import sys

from tests import support

_PROBE = """
import json, os, sys
from fcdd_jax.utils import tf_setup
assert 'tensorflow' not in sys.modules
tf = tf_setup.tensorflow()
assert tf_setup.tensorflow() is tf   # imported once
tf.constant(1.0) + 1.0               # runs an op: no log lines afterwards either
print(json.dumps({k: os.environ.get(k) for k in ('TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS')}))
print(json.dumps([d.device_type for d in tf.config.get_visible_devices()]))
"""


def _probe(**env):
  base = {k: v for k, v in os.environ.items() if k not in ('TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS',
                                                           'FCDD_DEBUG')}
  out = subprocess.run([sys.executable, '-c', _PROBE], cwd=support.ROOT, env=dict(base, **env), capture_output=True,
                       text=True, timeout=300, check=True)
  lines = out.stdout.splitlines()
  return json.loads(lines[-2]), json.loads(lines[-1]), out.stderr


def test_tensorflow_is_quiet_sees_no_accelerator_and_keeps_users_variables():
  """One fresh interpreter (a TensorFlow import costs seconds): the unset variable gets its quiet default, the
  user's own value of the other one is kept, nothing reaches stderr, TensorFlow sees the CPU only."""
  variables, devices, err = _probe(TF_ENABLE_ONEDNN_OPTS='1')
  assert variables == {'TF_CPP_MIN_LOG_LEVEL': '3', 'TF_ENABLE_ONEDNN_OPTS': '1'}
  assert devices == ['CPU']
  assert err == ''

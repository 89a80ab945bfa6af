"""Shared test support (no tests here): the CLI in a subprocess, a damaged checkpoint, fake VGG weights."""
import contextlib
import os
import subprocess
import sys

import numpy as np

from fcdd_jax.models import pretrained
from tests.paths import ROOT


def run_cli(args, devices=1, timeout=300):
  """`python -m fcdd_jax.main ARGS` from the checkout on `devices` simulated CPU devices (CompletedProcess)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.run([sys.executable, '-m', 'fcdd_jax.main', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def damage(step_dir):
  """Truncates every array chunk of a checkpoint step (what a crashed disk or copy leaves)."""
  n = 0
  for root, _, files in os.walk(os.path.join(step_dir, 'state')):
    if os.path.basename(root) == 'd':
      for f in files:
        with open(os.path.join(root, f), 'r+b') as fh:
          fh.truncate(10)
        n += 1
  assert n, f'no array files found under {step_dir}'


def fake_vgg_weights(seed=0, classifier=False):
  """Random VGG11-BN weights with torchvision's key names and shapes (running variances in [0.5, 2])."""
  rng = np.random.default_rng(seed)
  w = {}
  for k, shape in pretrained.expected_shapes().items():
    if k.startswith('classifier') and not classifier:
      continue
    if k.endswith('running_var'):
      w[k] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    else:
      w[k] = (rng.normal(size=shape) * (0.05 if len(shape) > 1 else 0.5)).astype(np.float32)
  return w


@contextlib.contextmanager
def read_only_dir(path):
  """`path` as a directory nobody can write into, root included: a read-only tmpfs mounted there, or a
  chmod 500 directory when mounting is not allowed (skips the test when that is still writable)."""
  import pytest  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  mounted = not subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', str(path)],
                               capture_output=True).returncode
  if not mounted:
    os.chmod(path, 0o500)
    if os.access(path, os.W_OK):
      os.chmod(path, 0o700)
      pytest.skip('cannot make a read-only directory here')
  try:
    yield str(path)
  finally:
    if mounted:
      subprocess.run(['umount', '-l', str(path)], check=False)
    else:
      os.chmod(path, 0o700)

"""Shared test support (no tests here): the CLI in a subprocess, a damaged checkpoint, fake VGG weights, a
training source of one image without any augmentation."""
import contextlib
import os
import subprocess
import sys

import numpy as np

from fcdd_jax.data import source
from fcdd_jax.data import transforms
from fcdd_jax.models import pretrained
from tests.paths import ROOT


def run_cli(args, devices=1, timeout=300, env=None):
  """`python -m fcdd_jax.main ARGS` from the checkout on `devices` simulated CPU devices (CompletedProcess);
  `env`: more environment variables."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             **(env or {}))
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
      w[k] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.05 if len(shape) > 1 else 0.5)
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


def identity_source(img, n=64):
  """A 'demo' data source whose n training images are all the uint8 [H,W,3] `img`, under an identity transform
  (no crop, flip, noise or normalisation beyond /255): a batch's pixels that differ from `img` are exactly
  what the anomaly generation changed."""
  h, w = img.shape[:2]
  t = transforms.Transform(mean=np.zeros(3, np.float32), std=np.ones(3, np.float32), input_size=(h, w),
                           raw_size=(h, w), channels=3, train_geom='none', hflip=False, noise_std=0.0)
  return source.Source(name='demo', class_names=('x',), normal_class=0, transform=t,
                       train_images=np.repeat(img[None], n, 0), test_images=img[None].repeat(2, 0),
                       test_labels=np.zeros(2, np.int32))


def changed_pixels_and_maps(config, img, step=1):
  """One training batch of `config` on `identity_source(img)`: [(pixels changed from img [H,W] bool, label,
  gtmap)] per example. Checks that the batch carries maps and at least 8 anomalies."""
  from fcdd_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  p = input_pipeline.Pipeline(config, identity_source(img))
  assert p.info.train_gtmaps
  b = p.global_train_batch(step)
  assert (b['label'] == 1).sum() >= 8
  return [((np.rint(x * 255).astype(int) != img).any(-1), y, g)
          for x, y, g in zip(b['image'], b['label'], b['gtmap'])]

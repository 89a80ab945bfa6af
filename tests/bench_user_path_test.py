"""bench.user_path: each implementation in its own worker process with the allocator users get."""
import json
import subprocess
import sys

import pytest

from tests.paths import ROOT
from tests.paths import user_env


def test_user_path_workers_use_their_users_allocators_and_the_ratio_is_theirs():
  pytest.importorskip('torch', reason='torch not installed')
  out = subprocess.run([sys.executable, '-m', 'bench.user_path', '--net', 'FCDD_CNN28_W', '--batch', '4',
                        '--steps', '2', '--dtypes', 'float32', '--layouts', 'nchw,channels_last'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=user_env())
  assert out.returncode == 0, out.stderr[-3000:]
  rs = [json.loads(l) for l in out.stdout.splitlines() if l.startswith('{')]
  by = {(r['impl'], r.get('dtype') or r.get('layout')): r for r in rs}
  assert set(by) == {('jax', 'float32'), ('torch', 'nchw'), ('torch', 'channels_last'), ('ratio', None)}
  from fcdd_jax.utils import memory  # pylint: disable=g-import-not-at-top
  # fcdd_jax.main's choice on a CPU host (mimalloc when the wheel is installed); PyTorch as shipped (glibc)
  assert by['jax', 'float32']['allocator'] == memory.resolve('auto')
  assert by['torch', 'nchw']['allocator'] == by['torch', 'channels_last']['allocator'] == 'glibc'
  for k in (('jax', 'float32'), ('torch', 'nchw'), ('torch', 'channels_last')):
    assert by[k]['img_per_s'] > 0 and by[k]['peak_rss_mb'] > 50 and by[k]['steps'] == 2
  best = max(by['torch', 'nchw']['img_per_s'], by['torch', 'channels_last']['img_per_s'])
  assert by['ratio', None]['best_torch_img_per_s'] == best
  assert by['ratio', None]['jax_float32_vs_best_torch'] == pytest.approx(by['jax', 'float32']['img_per_s'] / best,
                                                                         abs=2e-3)

"""Smoke test of bench.export_latency (tiny sizes; not a timed test)."""
import json
import os
import subprocess
import sys

from tests.paths import ROOT
from tests.paths import user_env


def test_export_latency_bench_on_a_generated_cnn28_w_run(tmp_path):
  run = str(tmp_path / 'run')
  out = subprocess.run([sys.executable, '-m', 'bench.export_latency', '--make_run', 'cnn28_w', '--make_run_steps', '2',
                        '--workdir', run, '--batches', '1,3', '--steps', '1'],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=user_env())
  assert out.returncode == 0, out.stderr[-3000:]
  lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith('{')]
  (exp,) = [l for l in lines if l['impl'] == 'export']
  assert exp['net'] == 'FCDD_CNN28_W' and exp['stablehlo_bytes'] > 0 and exp['savedmodel_bytes'] > 0
  timed = {(l['impl'], l['batch']) for l in lines if l['impl'] != 'export'}
  assert timed == {(i, b) for i in ('predict_crop', 'predict_full', 'stablehlo', 'savedmodel') for b in (1, 3)}
  for l in lines:
    assert l['device_kind']
    if l['impl'] != 'export':
      assert l['img_per_s'] > 0 and l['image_size'] == '28x28'
  pre = json.load(open(os.path.join(run, 'preprocessing.json')))
  assert pre['kind'] == 'lcn' and pre['channels'] == 1   # the fmnist-shaped run exports LCN preprocessing

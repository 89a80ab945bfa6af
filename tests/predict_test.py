"""Prediction CLI on a run trained in the test: scores equal an independent computation."""
import csv
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from configs import test as test_config
from fcdd_jax import input_pipeline
from fcdd_jax import predict
from fcdd_jax import train


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('run'))
  train.train_and_evaluate(test_config.get_config(), wd)
  return wd


def test_predict_folder_with_mixed_images_and_a_corrupt_file(run, tmp_path, capsys):
  inp = tmp_path / 'in'
  os.makedirs(inp / 'sub')
  rng = np.random.default_rng(0)
  imgs = {'a.png': rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
          'b.png': rng.integers(0, 255, (50, 40), dtype=np.uint8),
          'sub/a.png': rng.integers(0, 255, (20, 20, 4), dtype=np.uint8)}
  for name, arr in imgs.items():
    Image.fromarray(arr).save(inp / name)
  (inp / 'broken.png').write_bytes(b'garbage')
  out = tmp_path / 'out'
  assert predict.main(['--workdir', run, '--input', str(inp), '--output', str(out)]) == 0
  assert 'broken.png' in capsys.readouterr().err
  with open(out / 'scores.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 4
  by = {os.path.relpath(r['path'], inp): r for r in rows}
  assert by['broken.png']['score'] == ''
  thr = json.load(open(os.path.join(run, 'results.json')))['thresholds']['image']
  # independent computation: preprocessing by hand + the restored net
  pred = predict.Predictor(run)
  for name, arr in imgs.items():
    a = arr
    if a.ndim == 2:
      a = np.repeat(a[..., None], 3, -1)
    a = a[..., :3]
    a = input_pipeline.resize_u8(a, (32, 32))
    pp = json.load(open(os.path.join(run, 'preprocessing.json')))
    x = (a.astype(np.float32) / 255 - np.asarray(pp['mean'], np.float32)) / np.asarray(pp['std'], np.float32)
    net_phi = pred._fn(pred.variables, x[None])[0]  # pylint: disable=protected-access
    assert float(by[name]['score']) == pytest.approx(float(net_phi[0]), rel=1e-4)
    assert by[name]['anomalous'] == str(int(float(by[name]['score']) >= thr))
  for stem in ('in_a', 'b', 'sub_a'):
    assert os.path.exists(out / f'{stem}_overlay.png')
    assert os.path.exists(out / f'{stem}_mask.png')


def test_predict_explicit_threshold_and_errors(run, tmp_path, capsys):
  p = tmp_path / 'x.png'
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(p)
  assert predict.main(['--workdir', run, '--input', str(p), '--output', str(tmp_path / 'o'), '--threshold', '1e9']) == 0
  rows = list(csv.DictReader(open(tmp_path / 'o' / 'scores.csv')))
  assert rows[0]['anomalous'] == '0'
  assert predict.main(['--workdir', str(tmp_path), '--input', str(p), '--output', str(tmp_path / 'o2')]) == 2
  assert 'config.json not found' in capsys.readouterr().err

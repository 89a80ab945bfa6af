"""Smoke test of bench.fidelity (1 seed, 1 step, a small net): both sets build, train and evaluate."""
import os

import numpy as np
import pytest
from PIL import Image

from bench import fidelity


@pytest.mark.skipif(not os.path.isdir(fidelity.BOTTLE), reason='shared MVTec bottle data not available')
def test_fidelity_bench_runs_both_sets(tmp_path, capsys):
  out = fidelity.main(['--seeds', '0', '--steps', '1', '--net', 'FCDD_CNN224', '--batch', '8',
                       '--workdir', str(tmp_path), '--set', 'eval.pixel_auc_resolution=input'])
  by = {s['set']: s for s in out}
  assert set(by) == {'bottle', 'bottle_pasted'}
  assert 0 <= by['bottle']['image_auc_mean'] <= 1 and by['bottle']['pixel_auc_mean'] is None
  assert 0 <= by['bottle_pasted']['image_auc_mean'] <= 1 and 0 <= by['bottle_pasted']['pixel_auc_mean'] <= 1
  assert 'bottle_pasted: image AUC' in capsys.readouterr().out
  # the masked set: held-out nominal images, one pasted defect per anomalous image with its mask
  (root,) = [os.path.join(tmp_path, 'bench_fidelity', d) for d in os.listdir(tmp_path / 'bench_fidelity')
             if not d.startswith('.')]
  assert len(os.listdir(os.path.join(root, 'train', 'good'))) == 149
  assert len(os.listdir(os.path.join(root, 'test', 'good'))) == 50
  for i in range(30):
    img = np.asarray(Image.open(os.path.join(root, 'test', 'pasted', f'{i:03d}.png')))
    mask = np.asarray(Image.open(os.path.join(root, 'ground_truth', 'pasted', f'{i:03d}_mask.png'))) > 0
    assert 0 < mask.mean() < 0.1 and mask.shape == img.shape[:2]
  assert not os.path.exists(os.path.join(fidelity.BOTTLE, 'ground_truth'))   # nothing written into the source

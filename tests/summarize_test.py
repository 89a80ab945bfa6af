"""Sweep summaries: mean over seeds, then over classes."""
import json
import os

import pytest

from fcdd_jax import summarize


def test_aggregate_and_markdown(tmp_path):
  vals = {(0, 0): (0.9, 0.8), (0, 1): (0.7, None), (3, 0): (0.5, 0.6)}
  for (c, s), (ia, pa) in vals.items():
    d = tmp_path / f'normal_{c}' / f'seed_{s}'
    os.makedirs(d)
    (d / 'results.json').write_text(json.dumps({'image_auc': ia, 'pixel_auc': pa}))
  assert summarize.main([str(tmp_path)]) == 0
  s = json.loads((tmp_path / 'summary.json').read_text())
  assert s['per_class']['0']['image_auc'] == pytest.approx(0.8)
  assert s['per_class']['0']['image_auc_std'] == pytest.approx(0.1)
  assert s['image_auc'] == pytest.approx((0.8 + 0.5) / 2)
  assert s['pixel_auc'] == pytest.approx((0.8 + 0.6) / 2)
  md = (tmp_path / 'summary.md').read_text()
  assert '0.8000 ± 0.1000' in md and '**0.6500**' in md
  res = json.loads((tmp_path / 'results.json').read_text())
  assert len(res['runs']) == 3 and res['image_auc'] == pytest.approx(0.65)


def test_empty_dir_is_an_error(tmp_path, capsys):
  assert summarize.main([str(tmp_path)]) == 2
  assert 'no runs in' in capsys.readouterr().err

"""Sweep summaries: mean over seeds, then over classes."""
import json
import os

import pytest

from fcdd_jax.evaluation import summary as summarize
from tests import support


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


def test_checkpoint_behind_each_run_is_named_and_mismatches_warned(tmp_path, capsys):
  """Each run's newest readable checkpoint is reported; a run whose results describe a step that is no longer
  readable gets one warning line."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from fcdd_jax.utils import checkpointing  # pylint: disable=g-import-not-at-top
  for s in (0, 1):
    d = tmp_path / 'normal_0' / f'seed_{s}'
    os.makedirs(d)
    (d / 'results.json').write_text(json.dumps({'image_auc': 0.5 + s / 10, 'pixel_auc': None, 'steps': 6}))
    ck = checkpointing.Checkpointer(str(d / 'checkpoints'), asynchronous=False)
    for step in (3, 6):
      ck.save(step, {'w': np.full(3, step, np.float32)}, {'step': step})
    ck.close()
  support.damage(str(tmp_path / 'normal_0' / 'seed_1' / 'checkpoints' / '6'))
  assert summarize.main([str(tmp_path)]) == 0
  err = capsys.readouterr().err
  assert [r['checkpoint_step'] for r in json.loads((tmp_path / 'summary.json').read_text())['runs']] == [6, 3]
  warnings = [l for l in err.splitlines() if l.startswith('warning:')]
  assert warnings == ['warning: normal_0/seed_1: results.json describes step 6 but the newest readable checkpoint '
                      'is step 3; rerun its training to repair it']
  assert '2 of 2 runs have a readable checkpoint (steps 3, 6)' in err
  assert os.path.isdir(tmp_path / 'normal_0' / 'seed_1' / 'checkpoints' / '6')   # summarize changes nothing

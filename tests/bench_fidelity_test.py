"""Smoke test of bench.fidelity (1 seed, 1 step, a small net): both sets build, train and evaluate."""
import os

import numpy as np
import pytest
from PIL import Image

from bench import fidelity
from tests import testdata


@pytest.mark.skipif(not os.path.isdir(fidelity.BOTTLE), reason='shared MVTec bottle data not available')
def test_fidelity_bench_runs_both_sets(tmp_path, capsys):
  # 80 of the bottle's images: the masked set needs 61 training images (60 held out), the rest is budget
  bottle = testdata.bottle_subset(tmp_path / 'bottle', {'train/good': 70, 'test/good': 5, 'test/broken_large': 5})
  out = fidelity.main(['--seeds', '0', '--steps', '1', '--net', 'FCDD_CNN224', '--batch', '8', '--bottle', bottle,
                       '--workdir', str(tmp_path / 'w'), '--set', 'eval.pixel_auc_resolution=input'])
  by = {s['set']: s for s in out}
  assert set(by) == {'bottle', 'bottle_pasted'}
  assert 0 <= by['bottle']['image_auc_mean'] <= 1 and by['bottle']['pixel_auc_mean'] is None
  assert 0 <= by['bottle_pasted']['image_auc_mean'] <= 1 and 0 <= by['bottle_pasted']['pixel_auc_mean'] <= 1
  assert 'bottle_pasted: image AUC' in capsys.readouterr().out
  # the masked set: held-out nominal images, one pasted defect per anomalous image with its mask
  (root,) = [os.path.join(tmp_path, 'w', 'bench_fidelity', d) for d in os.listdir(tmp_path / 'w' / 'bench_fidelity')
             if not d.startswith('.')]
  assert len(os.listdir(os.path.join(root, 'train', 'good'))) == 10      # 70 - 60 held out
  assert len(os.listdir(os.path.join(root, 'test', 'good'))) == 35       # 5 + 30 of the held-out
  for i in range(30):
    img = np.asarray(Image.open(os.path.join(root, 'test', 'pasted', f'{i:03d}.png')))
    mask = np.asarray(Image.open(os.path.join(root, 'ground_truth', 'pasted', f'{i:03d}_mask.png'))) > 0
    assert 0 < mask.mean() < 0.1 and mask.shape == img.shape[:2]
  assert not os.path.exists(os.path.join(bottle, 'ground_truth'))   # nothing written into the source


def _recipes(per_set):
  """read_panel-shaped results: {recipe: {(set, seed): (image, pixel, aupro)}}."""
  out = {}
  for name, sets in per_set.items():
    runs = {}
    for set_name, seeds in sets.items():
      for seed, (img, pix, pro) in enumerate(seeds):
        runs[(set_name, seed)] = {'image_auc': img, 'pixel_auc': pix, 'aupro': pro, 'border': 1.0, 'border32': 1.0}
    out[name] = {'overrides': [], 'runs': runs}
  return out


def test_panel_table_means_and_leave_one_set_out():
  recipes = _recipes({
      'authors': {'a': [(0.6, 0.8, 0.5), (0.7, 0.8, 0.5)], 'b': [(0.8, None, None), (0.8, None, None)]},
      'x': {'a': [(0.9, 0.9, 0.6), (0.9, 0.9, 0.6)], 'b': [(0.5, None, None), (0.5, None, None)]},
  })
  lines = fidelity.panel_table(recipes, ['a', 'b'], [0, 1], 'x')
  text = '\n'.join(lines)
  assert '| a | image AUC | 0.900 ± 0.000 (n=2) | 0.650 ± 0.071 (n=2) |' in text
  assert '| **panel mean** | image AUC | **0.700** | **0.725** |' in text   # (0.9+0.5)/2, (0.65+0.8)/2
  # leaving out b, x wins on a and is judged on b: 0.5 < 0.8 - 0 -> WORSE; leaving out a, authors wins on b
  assert any(l.strip().startswith('b: chosen x') and 'WORSE' in l for l in lines)
  assert any(l.strip().startswith('a: chosen authors') for l in lines)


def test_panel_resumes_finished_runs(tmp_path, monkeypatch):
  calls = []

  def fake_train(c, run_dir):
    calls.append(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, 'results.json'), 'w') as f:
      f.write('{"image_auc": 0.5, "pixel_auc": null, "border": {"ratio": 2.0}}')

  from fcdd_jax.pipeline import train
  monkeypatch.setattr(train, 'train_and_evaluate', fake_train)
  monkeypatch.setattr(fidelity, 'PANEL', {'s1': str(tmp_path), 's2': str(tmp_path)})
  args = ['--panel', '--seeds', '0,1', '--sets', 's1,s2', '--workdir', str(tmp_path / 'w')]
  recipes = fidelity.main(args)
  assert len(calls) == 8 and set(recipes) == {'default', 'authors'}
  assert recipes['default']['runs'][('s2', 1)]['border'] == 2.0
  fidelity.main(args + ['--seeds', '0,1,2'])        # resume: only seed 2 is new
  assert len(calls) == 12
  with pytest.raises(SystemExit, match='was run with'):  # a name bound to other flags is refused
    fidelity.main(args + ['--name', 'default', '--set', 'optim.lr=1'])


def test_panel_rescore_reuses_the_trained_runs(tmp_path, monkeypatch):
  calls = []

  def fake_train(c, run_dir):
    calls.append((run_dir, c.eval.image_score, os.path.exists(os.path.join(run_dir, 'checkpoints', 'x'))))
    os.makedirs(os.path.join(run_dir, 'checkpoints'), exist_ok=True)
    open(os.path.join(run_dir, 'checkpoints', 'x'), 'w').close()
    with open(os.path.join(run_dir, 'results.json'), 'w') as f:
      f.write('{"image_auc": %s, "pixel_auc": null}' % (0.9 if c.eval.image_score == 'max' else 0.5))

  from fcdd_jax.pipeline import train
  monkeypatch.setattr(train, 'train_and_evaluate', fake_train)
  monkeypatch.setattr(fidelity, 'PANEL', {'s1': str(tmp_path)})
  base = ['--panel', '--seeds', '0', '--sets', 's1', '--workdir', str(tmp_path / 'w')]
  fidelity.main(base)
  with pytest.raises(SystemExit, match='eval'):
    fidelity.main(base + ['--rescore', 'authors', '--name', 'v', '--set', 'optim.lr=1'])
  recipes = fidelity.main(base + ['--rescore', 'authors', '--name', 'authors_max', '--set', 'eval.image_score=max'])
  assert calls[-1][1:] == ('max', True)       # evaluated on a copy of the trained run's checkpoints
  assert recipes['authors_max']['runs'][('s1', 0)]['image_auc'] == 0.9
  assert recipes['authors']['runs'][('s1', 0)]['image_auc'] == 0.5


def test_set_of_an_unknown_field_is_an_error():
  """`--set model.remat=False` was accepted silently (the unlocked config grew the field; nothing read it)."""
  from fcdd_jax.configs import custom  # pylint: disable=g-import-not-at-top
  c = custom.get_config()
  fidelity.apply_override(c, 'optim.lr=0.5')
  assert c.optim.lr == 0.5
  for item in ('model.remat=False', 'nope.x=1', 'optim.lr.x=1'):
    with pytest.raises(SystemExit, match='unknown config field'):
      fidelity.apply_override(c, item)
  assert 'remat' not in c.model

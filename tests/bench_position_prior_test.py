"""bench.position_prior: the pixel AUC / AUPRO of image-independent maps, against a NumPy rank-sum AUC
(tests/references.py)."""
import os

import numpy as np
from PIL import Image

from bench import fidelity
from bench import position_prior
from tests.references import np_rank_auc


def _folder(tmp_path, centres, size=24):
  """MVTec layout: 2 good test images and one anomalous image per (row, col) with a 3x3 defect there."""
  root = tmp_path / 'set'
  for d in ('test/good', 'test/defect', 'ground_truth/defect'):
    os.makedirs(root / d)
  img = np.zeros((size, size, 3), np.uint8)
  for i in range(2):
    Image.fromarray(img).save(root / 'test' / 'good' / f'{i:03d}.png')
  masks = []
  for i, (r, c) in enumerate(centres):
    m = np.zeros((size, size), np.uint8)
    m[r - 1:r + 2, c - 1:c + 2] = 255
    Image.fromarray(img).save(root / 'test' / 'defect' / f'{i:03d}.png')
    Image.fromarray(m).save(root / 'ground_truth' / 'defect' / f'{i:03d}_mask.png')
    masks.append(m > 0)
  return str(root), masks


def test_centre_baseline_matches_a_rank_auc_and_finds_centred_defects(tmp_path):
  size = 24
  root, _ = _folder(tmp_path, [(12, 12), (11, 13), (13, 11)], size)
  res = position_prior.baselines(root)
  masks = position_prior.test_masks(root)
  assert masks.shape == (5, size, size) and masks[3:].sum() == 0 and masks[:3].sum() == 27   # 'good' sorts last
  yy, xx = np.mgrid[0:size, 0:size]
  centre = -((yy + 0.5 - size / 2) ** 2 + (xx + 0.5 - size / 2) ** 2)
  want = np_rank_auc(masks.reshape(-1), np.tile(centre.reshape(-1), 5))
  assert abs(res['centre']['pixel_auc'] - want) < 1e-3 and want > 0.97   # centred defects: the map finds them
  # leave-one-out mask prior: each image's map is the mean of the others' masks
  prior = [(masks.sum(0) - m) / 4.0 for m in masks]
  want = np_rank_auc(masks.reshape(-1), np.concatenate([p.reshape(-1) for p in prior]))
  assert abs(res['mask_prior']['pixel_auc'] - want) < 1e-3


def test_corner_defects_give_the_centre_map_no_credit(tmp_path):
  root, _ = _folder(tmp_path, [(2, 2), (21, 21), (2, 21)])
  res = position_prior.baselines(root)
  assert res['centre']['pixel_auc'] < 0.2 and res['centre']['aupro'] < 0.05
  cache = tmp_path / 'cache'
  assert position_prior.cached(root, str(cache)) == position_prior.baselines(root)
  assert os.listdir(cache) == ['position_prior-v2-set.json']


def test_unmasked_set_has_no_position_baseline_and_a_darkness_border_ratio(tmp_path):
  root = tmp_path / 'nomask'
  os.makedirs(root / 'test' / 'good')
  img = np.full((256, 256), 200, np.uint8)
  img[:40, :40] = 0                                      # a dark corner, as the solar cells' cut corners
  Image.fromarray(img).save(root / 'test' / 'good' / '0.png')
  res = position_prior.baselines(str(root))
  assert set(res) == {'darkness_border'}
  # the hottest 1 % of the darkness map (502 px) lie in the dark corner (27² px after the 248 resize and the
  # centre crop), nearly all inside the 16 px band: share > 0.85 against the band's area share 1 - (192/224)²
  assert 0.85 / (1 - (192 / 224) ** 2) < res['darkness_border']['ratio'] <= 1 / (1 - (192 / 224) ** 2) + 1e-6
  img = np.full((256, 256), 200, np.uint8)
  img[108:148, 108:148] = 0                              # a dark centre: no border share at all
  Image.fromarray(img).save(root / 'test' / 'good' / '0.png')
  assert position_prior.baselines(str(root))['darkness_border']['ratio'] == 0


def test_panel_table_shows_the_position_baseline():
  runs = {('tire', 0): {'image_auc': 0.5, 'pixel_auc': 0.9, 'aupro': 0.6, 'border': 1.0, 'border32': 1.0}}
  recipes = {'authors': {'overrides': [], 'runs': runs}}
  prior = {'centre': {'pixel_auc': 0.934, 'aupro': 0.784}, 'mask_prior': {'pixel_auc': 0.898, 'aupro': 0.777},
           'darkness_border': {'ratio': 1.71, 'ratio32': 1.7}}
  lines = fidelity.panel_table(recipes, ['tire'], [0], 'authors', priors={'tire': prior})
  (row,) = [l for l in lines if 'position only' in l]
  assert 'centre 0.934 / 0.784' in row and 'mask_prior 0.898 / 0.777' in row
  (row,) = [l for l in lines if 'darkness' in l]
  assert '1.71 / 1.70' in row

"""evaluation/pixel_stream: pixel AUC and AUPRO streamed image by image into a bounded histogram equal the
definitions (NumPy references in tests/references.py) within the bound on the binning error they report."""
import numpy as np
import pytest

from fcdd_jax.evaluation import pixel_stream
from tests import references


def _images(rng, n=5, grid=None):
  """Masks (0/255, a few rectangles, one image without defects) and smooth heatmaps, hotter on the defects;
  `grid`: scores rounded to multiples of 1/grid in [1, 2) (few distinct values, many ties)."""
  masks, heats = [], []
  for i in range(n):
    h, w = (int(v) for v in rng.integers(15, 40, 2))
    m = np.zeros((h, w), np.uint8)
    if i:
      y, x = (int(v) for v in rng.integers(0, 10, 2))
      m[y:y + 4, x:x + 6] = 255
      m[h - 3:h - 1, w - 3:] = 255 if i % 2 else 0
    yy, xx = np.mgrid[0:h, 0:w]
    heat = np.sin(yy / 3.0 + i) * np.cos(xx / 5.0) + rng.normal(0, 0.3, (h, w)) + (m > 0) * 0.8
    if grid:
      heat = 1 + np.floor((heat - heat.min()) / (heat.max() - heat.min() + 1e-9) * grid) / grid
    masks.append(m)
    heats.append(heat.astype(np.float32))
  return masks, heats


def _stream(masks, heats, **kv):
  s = pixel_stream.PixelStream(**kv)
  for m, h in zip(masks, heats):
    s.add(m, h)
  return s


def test_exact_when_every_distinct_score_has_its_own_bin():
  masks, heats = _images(np.random.default_rng(0), grid=64)   # 65 distinct values 2^17 keys apart
  s = _stream(masks, heats, max_bins=1 << 12)
  (auc, auc_bound), (pro, pro_bound) = s.pixel_auc(), s.aupro()
  labels = np.concatenate([m.reshape(-1) > 0 for m in masks])
  scores = np.concatenate([h.reshape(-1) for h in heats])
  assert auc == pytest.approx(references.np_rank_auc(labels, scores), abs=1e-12)
  assert pro == pytest.approx(references.np_aupro(masks, heats), abs=1e-12)
  assert auc_bound > 0 and s.shift > 0   # ties between classes inside a bin: the bound says so, exactly 1/2 each


@pytest.mark.parametrize('max_bins', [1 << 20, 1 << 10, 16])
def test_binned_metrics_stay_within_their_reported_error(max_bins):
  masks, heats = _images(np.random.default_rng(1), n=6)
  heats[3] = heats[3] * 1000 + 5000     # a later image far outside the range seen so far: bins merge
  s = _stream(masks, heats, max_bins=max_bins)
  assert s.hist['pos'].size <= max_bins
  (auc, auc_bound), (pro, pro_bound) = s.pixel_auc(), s.aupro()
  labels = np.concatenate([m.reshape(-1) > 0 for m in masks])
  ref_auc = references.np_rank_auc(labels, np.concatenate([h.reshape(-1) for h in heats]))
  ref_pro = references.np_aupro(masks, heats)
  assert abs(auc - ref_auc) <= auc_bound + 1e-12 and abs(pro - ref_pro) <= pro_bound + 1e-12
  if max_bins == 1 << 20:   # the default size: the bound itself is negligible
    assert auc_bound < 1e-4 and pro_bound < 1e-3
  else:
    assert auc_bound > 0


def test_order_of_images_does_not_matter_and_bad_input_is_named():
  masks, heats = _images(np.random.default_rng(2))
  a, b = _stream(masks, heats, max_bins=64), _stream(masks[::-1], heats[::-1], max_bins=64)
  assert a.pixel_auc() == pytest.approx(b.pixel_auc(), abs=1e-12)
  assert a.aupro() == pytest.approx(b.aupro(), abs=1e-12)
  with pytest.raises(ValueError, match=r'mask shape \(3, 4\) differs from heatmap shape \(4, 3\)'):
    a.add(np.zeros((3, 4)), np.zeros((4, 3), np.float32))
  with pytest.raises(ValueError, match='needs anomalous and nominal pixels'):
    _stream([np.zeros((4, 4))], [np.ones((4, 4), np.float32)]).pixel_auc()


def test_threshold_sample_is_uniform_and_order_free():
  heats = [np.full((100, 100), k, np.float32) for k in range(4)]
  a, b = pixel_stream.ThresholdSample(0.25), pixel_stream.ThresholdSample(0.25)
  for i in range(4):
    a.add(i, heats[i], heats[i] > 1)
  for i in (3, 1, 0, 2):
    b.add(i, heats[i], heats[i] > 1)
  ha, ma = a.arrays()
  hb, _ = b.arrays()
  assert np.sort(ha).tolist() == np.sort(hb).tolist()
  counts = np.bincount(ha.astype(int), minlength=4)
  assert np.all(np.abs(counts - 2500) < 250) and np.array_equal(ma, ha > 1)

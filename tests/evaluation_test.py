"""Metrics against sklearn and hand-worked cases."""
import tracemalloc

import numpy as np
import pytest
from sklearn import metrics

from fcdd_jax.evaluation import metrics as evaluation


@pytest.mark.parametrize('seed', range(4))
def test_roc_auc_matches_sklearn_with_ties(seed):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, 500)
  s = rng.integers(0, 7, 500).astype(float) + y * rng.random(500)
  assert evaluation.roc_auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
  valid = rng.random(500) > 0.3
  assert evaluation.roc_auc(y, s, valid) == pytest.approx(metrics.roc_auc_score(y[valid], s[valid]), abs=1e-12)


def test_roc_auc_needs_both_classes():
  with pytest.raises(ValueError, match='both classes'):
    evaluation.roc_auc([0, 0], [0.1, 0.2])


def test_pixel_auc_generators_of_different_shapes_and_chunks():
  rng = np.random.default_rng(0)
  shapes = [(17, 23), (5, 5), (40, 31)]
  masks = [(rng.random(s) > 0.8).astype(np.uint8) for s in shapes]
  maps = [np.round(rng.random(s) * 5, 1).astype(np.float32) + m * rng.random(s).astype(np.float32)
          for s, m in zip(shapes, masks)]
  maps[1][:] = -0.0  # negative zero ties with +0.0
  maps[2][0, :5] = 0.0
  want = metrics.roc_auc_score(np.concatenate([m.ravel() for m in masks]),
                               np.concatenate([h.ravel() for h in maps]))
  for chunk in (7, 64, 1 << 22):
    got = evaluation.pixel_auc((m for m in masks), (h for h in maps), chunk=chunk)
    assert got == pytest.approx(want, abs=1e-12)


def test_pixel_auc_memory_per_pixel():
  n = 2_000_000
  rng = np.random.default_rng(1)
  masks = [(rng.random((500, 250)) > 0.9).astype(np.uint8) for _ in range(16)]
  maps = [rng.random((500, 250)).astype(np.float32) for _ in range(16)]
  tracemalloc.start()
  evaluation.pixel_auc(masks, maps, chunk=1 << 16)
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert peak / n <= 16, f'{peak / n:.1f} bytes per pixel'


def test_roc_curve_and_f1_threshold():
  rng = np.random.default_rng(2)
  y = rng.integers(0, 2, 300)
  s = rng.integers(0, 10, 300) + 2.0 * y
  fpr, tpr, thr = evaluation.roc_curve(y, s)
  fpr2, tpr2, thr2 = metrics.roc_curve(y, s, drop_intermediate=False)
  np.testing.assert_allclose(fpr, fpr2)
  np.testing.assert_allclose(tpr, tpr2)
  np.testing.assert_allclose(thr[1:], thr2[1:])
  t, f1 = evaluation.f1_max_threshold(y, s)
  best = max(metrics.f1_score(y, s >= c) for c in np.unique(s))
  assert f1 == pytest.approx(best)
  assert metrics.f1_score(y, s >= t) == pytest.approx(best)
  assert evaluation.quantile_threshold(np.arange(101), 0.9) == pytest.approx(90)


def test_aupro_hand_worked():
  # One 4x4 image: a 2-pixel region A (top-left, 8-connected diagonal) and a 1-pixel region B; 13 nominal.
  mask = np.zeros((4, 4), np.uint8)
  mask[0, 0] = mask[1, 1] = 1      # diagonal neighbours: one region under 8-connectivity
  mask[3, 3] = 1
  h = np.zeros((4, 4))
  h[0, 0], h[1, 1], h[3, 3] = 0.9, 0.5, 0.7
  h[2, 0] = 0.6                    # one nominal pixel scored high
  # Thresholds descending: 0.9 -> PRO=(1/2+0)/2=0.25, FPR 0; 0.7 -> PRO=(0.5+1)/2=0.75, FPR 0;
  # 0.6 -> FPR=1/13, PRO .75; 0.5 -> PRO=1, FPR 1/13; 0 -> FPR 1, PRO 1.
  # Area up to 0.3: [0,1/13] at 0.75 (jump at FPR 0 to .75), then from 1/13 to 0.3 at PRO 1:
  # trapezoids: (0 -> 1/13): (0.75 + 0.75)/2 * 1/13; vertical jump at 1/13 to 1.0; (1/13 -> 0.3): 1.0 * (0.3 - 1/13).
  want = (0.75 * (1 / 13) + 1.0 * (0.3 - 1 / 13)) / 0.3
  assert evaluation.aupro([mask], [h]) == pytest.approx(want, rel=1e-9)


def test_resize_nearest_matches_torch():
  torch = pytest.importorskip('torch', reason='torch not installed (pip install -e ".[torch]")')
  x = np.arange(28 * 28, dtype=np.float32).reshape(28, 28)
  for size in ((224, 224), (900, 900), (17, 40), (1024, 1024)):
    want = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], size=size, mode='nearest')[0, 0]
    np.testing.assert_array_equal(evaluation.resize_nearest(x, size), want.numpy())


def test_resize_nearest_formula():
  x = np.arange(10).reshape(2, 5)
  out = evaluation.resize_nearest(x, (4, 3))
  rows = [int(np.floor(i * 2 / 4)) for i in range(4)]
  cols = [int(np.floor(j * 5 / 3)) for j in range(3)]
  np.testing.assert_array_equal(out, x[np.ix_(rows, cols)])


def test_border_share_against_a_loop_reference():
  rng = np.random.default_rng(3)
  maps = rng.random((5, 40, 30))
  maps[0, :3, :] += 5.0         # image 0: the hottest pixels are in the top rows, inside the 4-px band
  maps[1, 15:20, 12:18] += 5.0  # image 1: a hot blob in the centre
  band, top = 4, 0.02
  shares = []
  for h in maps:                # independent reference: sort all pixels, walk the hottest k, test each one
    k = int(np.ceil(top * h.size))
    order = np.argsort(-h.reshape(-1), kind='stable')[:k]
    ys, xs = np.unravel_index(order, h.shape)
    near = [(y < band or y >= h.shape[0] - band or x < band or x >= h.shape[1] - band) for y, x in zip(ys, xs)]
    shares.append(np.mean(near))
  area = 1 - (40 - 2 * band) * (30 - 2 * band) / (40 * 30)
  share, band_area = evaluation.border_share(list(maps), band=band, top=top)
  assert share == pytest.approx(np.mean(shares)) and band_area == pytest.approx(area)
  assert evaluation.border_share([maps[0]], band=band, top=top)[0] == 1.0
  assert evaluation.border_share([maps[1]], band=band, top=top)[0] == 0.0
  # several bands from one selection of the hottest pixels (results.thresholds_and_aupro: 16 and 32 px)
  wide = []
  for h in maps:
    order = np.argsort(-h.reshape(-1), kind='stable')[:int(np.ceil(top * h.size))]
    ys, xs = np.unravel_index(order, h.shape)
    wide.append(np.mean([(y < 9 or y >= 31 or x < 9 or x >= 21) for y, x in zip(ys, xs)]))
  (s4, a4), (s9, a9) = evaluation.border_share(list(maps), band=(band, 9), top=top)
  assert s4 == pytest.approx(np.mean(shares)) and a4 == pytest.approx(area)
  assert s9 == pytest.approx(np.mean(wide)) and a9 == pytest.approx(1 - 22 * 12 / 1200)


def test_image_threshold_is_f1_max_on_labelled_data_else_a_nominal_quantile():
  """evaluation.image_threshold (results and native evaluation share it) against brute-force NumPy."""
  rng = np.random.default_rng(3)
  labels = (rng.random(60) < 0.4).astype(np.int32)
  scores = rng.normal(size=60) + labels
  th = evaluation.image_threshold(labels, scores, 0.9)
  def f1(t):
    pred = scores >= t
    tp = np.sum(pred & (labels == 1))
    return 2 * tp / (pred.sum() + labels.sum())
  best = max(f1(t) for t in scores)
  assert th['image_rule'].startswith('f1_max') and abs(th['image_f1'] - best) < 1e-9 and f1(th['image']) == best
  nominal = evaluation.image_threshold(np.zeros(60, np.int32), scores, 0.9)
  assert abs(nominal['image'] - np.quantile(scores, 0.9)) < 1e-6 and 'image_f1' not in nominal

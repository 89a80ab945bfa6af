"""Blob self-paste (selfpaste.blobpaste, noise mode `blobpaste`): the image's own content moved inside a
smooth blob. Checked on "position images" whose pixels encode their own coordinates, so the pasted pixels
tell where they came from; the translation, the blob's shape statistics and the map are recovered from the
output alone with NumPy/SciPy."""
import numpy as np
import pytest
from scipy import ndimage

from fcdd_jax.data import anomalies
from fcdd_jax.data import selfpaste
from tests import support


def _position_image(h, w):
  yy, xx = np.mgrid[0:h, 0:w]
  return np.stack([yy, xx, np.full_like(yy, 200)], -1).astype(np.uint8)


@pytest.mark.parametrize('hw', [(256, 256), (96, 160)])
def test_the_blob_is_the_image_itself_moved_by_a_wrapping_offset(hw):
  h, w = hw
  img = _position_image(h, w)
  yy, xx = np.mgrid[0:h, 0:w]
  for seed in range(20):
    out, mask = selfpaste.blobpaste(np.random.default_rng(seed), img, jitter=0)
    assert mask.any()
    # outside the map, only a thin soft edge may change, and it touches the map
    edge = (out != img).any(-1) & ~mask
    assert not (edge & ~ndimage.binary_dilation(mask, iterations=3)).any()
    # inside: most pixels are exactly the image at (y - dy, x - dx) mod (h, w), one offset for all
    exact = mask & (out[..., 2] == 200)
    dys = (yy - out[..., 0].astype(int))[exact] % h
    dxs = (xx - out[..., 1].astype(int))[exact] % w
    pairs, counts = np.unique(np.stack([dys, dxs], 1), axis=0, return_counts=True)
    dy, dx = pairs[counts.argmax()]
    assert counts.max() >= 0.5 * mask.sum(), (seed, counts.max(), mask.sum())
    assert h // 8 <= dy < h - h // 8 and w // 8 <= dx < w - w // 8, (dy, dx)


def test_blob_shapes_are_single_small_irregular_and_elongated_both_ways():
  shares, aspects = [], []
  for seed in range(150):
    out, mask = selfpaste.blobpaste(np.random.default_rng(seed), _position_image(256, 256), jitter=0)
    lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(lab.ravel())[1:]
    assert n >= 1 and sizes.max() >= 0.9 * mask.sum(), (seed, sizes)   # one blob (bar edge specks)
    shares.append(mask.mean())
    ys, xs = np.nonzero(lab == 1 + sizes.argmax())
    aspects.append((np.ptp(ys) + 1) / (np.ptp(xs) + 1))
  shares, aspects = np.array(shares), np.log(np.array(aspects))
  assert shares.max() <= 0.06 and np.median(shares) < 0.02 and shares.min() > 0
  assert aspects.max() > np.log(2.5) and aspects.min() < -np.log(2.5)   # tall and wide blobs
  assert abs(np.median(aspects)) < 0.35


def test_same_seed_same_output_and_nothing_to_detect_on_a_flat_image():
  img = np.random.default_rng(1).integers(0, 256, (64, 64, 1)).astype(np.uint8)
  a, ma = selfpaste.blobpaste(np.random.default_rng(5), img)
  b, mb = selfpaste.blobpaste(np.random.default_rng(5), img)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(ma, mb)
  flat = np.full((64, 64, 3), 128, np.uint8)
  out, m = selfpaste.blobpaste(np.random.default_rng(5), flat, jitter=0)
  np.testing.assert_array_equal(out, flat)
  assert not m.any()
  # min_change: a pixel counts only where some channel moved by more than that many levels
  out, m = selfpaste.blobpaste(np.random.default_rng(5), _position_image(64, 64), jitter=0, min_change=255)
  assert not m.any() and (out != _position_image(64, 64)).any()
  with pytest.raises(ValueError, match='blobpaste needs a uint8'):
    selfpaste.blobpaste(np.random.default_rng(0), np.zeros((8, 8), np.float32))


def test_make_anomaly_blobpaste_maps():
  x = np.random.default_rng(3).integers(0, 256, (40, 56, 3)).astype(np.uint8)
  ref, mask = selfpaste.blobpaste(np.random.default_rng(9), x, min_change=16)
  img, gt = anomalies.make_anomaly('malformed_normal_gt', 'blobpaste', np.random.default_rng(9), x,
                                   gt_min_change=16)
  np.testing.assert_array_equal(img, ref)
  np.testing.assert_array_equal(gt, mask.astype(np.float32))
  assert gt.dtype == np.float32 and 0 < gt.sum() < gt.size
  for sup in ('malformed_normal', 'noise'):
    img2, gt2 = anomalies.make_anomaly(sup, 'blobpaste', np.random.default_rng(9), x)
    assert (gt2 == 1).all() and (img2 != x).any()
  with pytest.raises(ValueError, match='supervise_mode'):
    anomalies.make_anomaly('other', 'blobpaste', np.random.default_rng(9), x)
  assert 'blobpaste' in anomalies.SYNTHETIC_MODES and 'blobpaste' not in anomalies.NOISE_MODES


def test_pipeline_trains_blobpaste_with_its_maps(make_config):
  """malformed_normal_gt + blobpaste: the batch carries maps without data.generated_maps, each anomaly's map
  is inside the pixels that changed and covers all of them but a thin soft edge."""
  img = _position_image(48, 48)
  cfg = make_config('demo', batch_size=32, **{'data.supervise_mode': 'malformed_normal_gt',
                                              'data.noise_mode': 'blobpaste'})
  for changed, y, g in support.changed_pixels_and_maps(cfg, img):
    if not y:
      assert not changed.any() and not g.any()
      continue
    assert g.any() and not (g.astype(bool) & ~changed).any()
    assert not (changed & ~ndimage.binary_dilation(g > 0, iterations=3)).any()

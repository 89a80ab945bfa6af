"""data/transforms.py: `data.orientation` (flips / all 8 orientations of the square) on images and masks."""
import numpy as np
import pytest

from fcdd_jax.configs import custom
from fcdd_jax.data import checks
from fcdd_jax.data import transforms
from fcdd_jax.utils.errors import ConfigError


def _dihedral(img):
  """The 8 orientations of a square array, written out as index maps (independent of np.rot90)."""
  n = img.shape[0]
  i, j = np.mgrid[0:n, 0:n]
  r = n - 1
  maps = [(i, j), (i, r - j), (r - i, j), (r - i, r - j),     # identity and the three flips
          (j, i), (j, r - i), (r - j, i), (r - j, r - i)]     # transposes and the quarter turns
  return [img[a, b] for a, b in maps]


def _transform(orientation, hflip=True):
  return transforms.Transform(mean=np.zeros(3, np.float32), std=np.ones(3, np.float32), input_size=(6, 6),
                              raw_size=(6, 6), channels=3, train_geom='none', hflip=hflip, orientation=orientation,
                              noise_std=0.0)


def _seen(orientation, n=800):
  """How often each of the 8 orientations of an asymmetric image (and its mask with it) comes out."""
  img = (np.arange(36).reshape(6, 6, 1) * np.ones((1, 1, 3))).astype(np.uint8)
  mask = np.zeros((6, 6), np.uint8)
  mask[0, 1] = 1                              # a marker the mask must carry along with the image
  refs = _dihedral(img[..., 0])
  mrefs = _dihedral(mask)
  t, rng = _transform(orientation), np.random.default_rng(0)
  counts = np.zeros(8, int)
  for _ in range(n):
    x, m = t.train(img, mask, rng)
    (k,) = [k for k, r in enumerate(refs) if np.array_equal(np.rint(x[..., 0] * 255), r)]
    assert np.array_equal(m, mrefs[k])
    counts[k] += 1
  return counts / n


def test_rot90_gives_all_eight_orientations_equally_often():
  share = _seen('rot90')
  assert np.all(np.abs(share - 1 / 8) < 0.05), share


def test_flips_give_the_four_flips_and_no_quarter_turns():
  share = _seen('flips')
  assert np.all(np.abs(share[:4] - 1 / 4) < 0.06) and share[4:].sum() == 0, share


def test_default_leaves_the_random_stream_and_geometry_of_the_reference():
  img = np.random.default_rng(1).integers(0, 255, (6, 6, 3)).astype(np.uint8)
  a, b = np.random.default_rng(5), np.random.default_rng(5)
  x0, _ = _transform('').train(img, None, a)
  x1, _ = transforms.Transform(mean=np.zeros(3, np.float32), std=np.ones(3, np.float32), input_size=(6, 6),
                               raw_size=(6, 6), channels=3, train_geom='none', noise_std=0.0).train(img, None, b)
  assert np.array_equal(x0, x1) and a.random() == b.random()


@pytest.mark.parametrize('name,preproc,orientation,ok', [
    ('custom', 'aug1', 'rot90', True), ('custom', 'none', 'flips', True), ('custom', 'aug1', '', True),
    ('custom', 'aug1', 'rot45', False), ('mvtec', 'aug1', 'flips', False)])
def test_orientation_is_checked_with_the_dataset(name, preproc, orientation, ok):
  d = custom.get_config().data
  d.name, d.preproc, d.orientation = name, preproc, orientation
  if ok:
    checks.check_orientation(d)
  else:
    with pytest.raises(ConfigError, match='config.data.orientation'):
      checks.check_orientation(d)


def test_custom_data_trains_with_the_stated_orientation(tmp_path):
  """configs/custom.py on a folder: the training transform carries data.orientation; the test one does not."""
  from fcdd_jax.data import custom as custom_data  # pylint: disable=g-import-not-at-top
  from tests import testdata  # pylint: disable=g-import-not-at-top
  testdata.write_mvtec_tree(str(tmp_path / 'part'), size=40, n_train=4)
  c = custom.get_config()
  c.data.root, c.data.cache_dir, c.data.orientation = str(tmp_path / 'part'), str(tmp_path / 'cache'), 'rot90'
  c.data.supervise_mode, c.model.name = 'malformed_normal', 'FCDD_CNN224_VGG_NOPT'
  src = custom_data.load(c)
  assert src.transform.orientation == 'rot90'
  x = src.train_images[0]
  outs = {src.transform.train(x, None, np.random.default_rng(s))[0].tobytes() for s in range(40)}
  tests = {src.transform.test(x).tobytes() for _ in range(3)}
  assert len(outs) > 4 and len(tests) == 1


# ColorJitter: torchvision's PIL path (the reference's), checked against NumPy / colorsys formulas of Pillow's
# ImageEnhance blends (float32 arithmetic, truncated to uint8) and of PIL's HSV.

def _blend(a, b, f):
  """Image.blend(a, b, f) as libImaging computes it: float32 a + f·(b − a), clipped, truncated."""
  t = a.astype(np.float32) + np.float32(f) * (b.astype(np.float32) - a.astype(np.float32))
  return np.clip(np.trunc(t), 0, 255).astype(np.uint8)


def _luma(img):
  """PIL's RGB -> L: (299 R + 587 G + 114 B) / 1000, rounded (ITU-R 601-2)."""
  x = img.astype(np.int64)
  return ((x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def _draw(seed, n_ops, lo, hi):
  rng = np.random.default_rng(seed)
  f = rng.uniform(lo, hi)
  rng.permutation(n_ops)
  return f


def test_color_jitter_brightness_contrast_saturation_are_pillows_blends():
  img = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
  np.testing.assert_array_equal(transforms.color_jitter(img, 0, 0, 0, 0, np.random.default_rng(0)), img)
  f = _draw(5, 1, 0.5, 1.5)
  out = transforms.color_jitter(img, 0.5, 0, 0, 0, np.random.default_rng(5))
  np.testing.assert_array_equal(out, _blend(np.zeros_like(img), img, f))
  f = _draw(6, 1, 0.2, 1.8)
  out = transforms.color_jitter(img, 0, 0.8, 0, 0, np.random.default_rng(6))
  mean = int(_luma(img).astype(np.float64).mean() + 0.5)
  np.testing.assert_array_equal(out, _blend(np.full_like(img, mean), img, f))
  f = _draw(7, 1, 0.0, 2.0)
  out = transforms.color_jitter(img, 0, 0, 1.0, 0, np.random.default_rng(7))
  np.testing.assert_array_equal(out, _blend(np.repeat(_luma(img)[..., None], 3, -1), img, f))
  gray = img[..., :1]   # gray images: brightness and contrast only
  f = _draw(8, 2, 0.5, 1.5)
  out = transforms.color_jitter(gray, 0.5, 0, 1.0, 0, np.random.default_rng(8))
  assert out.shape == gray.shape


def test_color_jitter_hue_shifts_pils_hsv_hue_by_whole_levels():
  import colorsys  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  img = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
  g = np.full((4, 4, 3), 100, np.uint8)
  np.testing.assert_array_equal(transforms.color_jitter(g, 0, 0, 0, 0.5, rng), g)   # gray stays gray
  f = _draw(3, 1, -0.5, 0.5)
  out = transforms.color_jitter(img, 0, 0, 0, 0.5, np.random.default_rng(3)).astype(np.int64)
  k = int(f * 255)                     # torchvision: the uint8 hue channel + int(f·255), wrapping
  for (r, gg, b), o in zip(img.reshape(-1, 3) / 255.0, out.reshape(-1, 3)):
    h, s, v = colorsys.rgb_to_hsv(r, gg, b)
    want = np.asarray(colorsys.hsv_to_rgb(((round(h * 255) + k) % 256) / 255.0, s, v)) * 255
    assert np.abs(o - want).max() <= v * 255 * 6 / 256 + 1, (o, want)   # one hue level of 256 moves a channel v·6/256
  # |f| < 1/255: no shift, only PIL's HSV round trip (hue quantised to 256 levels: up to ~6 levels at v = 255)
  out = transforms.color_jitter(img, 0, 0, 0, 0.001, np.random.default_rng(3)).astype(int)
  assert np.abs(out - img).max() <= 6 and np.abs(out - img).mean() < 1.5

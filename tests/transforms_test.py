"""data/transforms.py: `data.orientation` (flips / all 8 orientations of the square) on images and masks; the
ColorJitter hue shift against matplotlib's HSV round trip (bit for bit) and Python's colorsys."""
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
  """configs/custom.py on a folder (preproc none: no crop, flip or jitter of its own): each training input is
  one of the 8 orientations of the test input, several of them turn up, and without data.orientation none does."""
  from fcdd_jax.data import custom as custom_data  # pylint: disable=g-import-not-at-top
  from tests import testdata  # pylint: disable=g-import-not-at-top
  testdata.write_mvtec_tree(str(tmp_path / 'part'), size=40, n_train=4)
  seen = {}
  for orientation in ('rot90', ''):
    c = custom.get_config()
    c.data.root, c.data.cache_dir, c.data.orientation = str(tmp_path / 'part'), str(tmp_path / 'cache'), orientation
    c.data.supervise_mode, c.data.preproc, c.model.name = 'malformed_normal', 'none', 'FCDD_CNN224_VGG_NOPT'
    src = custom_data.load(c)
    assert src.transform.orientation == orientation
    x = src.train_images[0]
    ref = src.transform.test(x)
    per_channel = [_dihedral(ref[..., ch]) for ch in range(ref.shape[-1])]
    turns = [np.stack([per_channel[ch][k] for ch in range(ref.shape[-1])], -1) for k in range(8)]
    kinds = set()
    for s in range(40):
      out = src.transform.train(x, None, np.random.default_rng(s))[0]
      (k,) = [k for k, t in enumerate(turns) if np.array_equal(out, t)]
      kinds.add(k)
    seen[orientation] = kinds
  assert len(seen['rot90']) >= 6 and seen[''] == {0}


def _hue_test_images():
  """Random colours plus the cases HSV treats apart: greys (no saturation), black, white, pure and tied
  primaries (two channels equal to the maximum)."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (40, 48, 3)).astype(np.float32)
  x[:4, :, 1] = x[:4, :, 0]                            # red and green tie
  x[4:8, :, 2] = x[4:8, :, 1]                          # green and blue tie
  x[8:12] = x[8:12, :, :1]                             # greys
  x[12, :8] = 0
  x[12, 8:16] = 255
  x[13, :6] = np.eye(3).repeat(2, 0) * 255             # pure primaries
  x[13, 6:12] = (1 - np.eye(3)).repeat(2, 0) * 255     # pure secondaries (two channels at the maximum)
  return x


@pytest.mark.parametrize('f', [0.0, 0.013, -0.2, 0.5, -0.5, 1 / 3, 0.49999])
def test_hue_shift_is_matplotlibs_hsv_round_trip_bit_for_bit(f):
  from matplotlib import colors  # pylint: disable=g-import-not-at-top
  x = _hue_test_images()
  hsv = colors.rgb_to_hsv(np.clip(x, 0, 255) / 255.0)
  hsv[..., 0] = (hsv[..., 0] + f) % 1.0
  want = colors.hsv_to_rgb(hsv) * 255.0
  got = transforms.hue_shift(x, f)
  assert got.dtype == want.dtype == np.float32
  np.testing.assert_array_equal(got, want)


def test_hue_shift_turns_the_hue_as_colorsys_does():
  import colorsys  # pylint: disable=g-import-not-at-top
  x = _hue_test_images()
  got = transforms.hue_shift(x, 0.3)
  for y in range(0, 40, 3):
    for z in range(0, 48, 5):
      h, s, v = colorsys.rgb_to_hsv(*(x[y, z].astype(np.float64) / 255))
      want = np.array(colorsys.hsv_to_rgb((h + 0.3) % 1.0, s, v)) * 255
      np.testing.assert_allclose(got[y, z], want, atol=1e-3)


def test_color_jitter_hue_keeps_the_matplotlib_round_trip():
  """The whole ColorJitter with only a hue factor: the same uint8 image as the matplotlib formula it replaced."""
  from matplotlib import colors  # pylint: disable=g-import-not-at-top
  img = _hue_test_images().astype(np.uint8)
  f = np.random.default_rng(5).uniform(-0.5, 0.5)
  hsv = colors.rgb_to_hsv(np.clip(img.astype(np.float32), 0, 255) / 255.0)
  hsv[..., 0] = (hsv[..., 0] + f) % 1.0
  want = np.clip(np.rint(colors.hsv_to_rgb(hsv) * 255.0), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(transforms.color_jitter(img, 0, 0, 0, 0.5, np.random.default_rng(5)), want)

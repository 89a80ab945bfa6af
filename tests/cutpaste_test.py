"""CutPaste / CutPaste-Scar (cutpaste.cutpaste, noise modes cutpaste*): geometry, masks, jitter, seeding.

The geometry is checked on "position images" whose pixel values encode their own coordinates, so the pasted
pixels tell where they were cut from: the tests recover the translation (CutPaste) or the rotation (scar)
from the output alone, with NumPy, and compare with the paper's ranges (arXiv:2104.04015)."""
import numpy as np
import pytest

from fcdd_jax.data import anomalies
from fcdd_jax.data import cutpaste

# Paper ranges, written out independently of the module's constants
AREA = (0.02, 0.15)
ASPECT = (0.3, 3.3)
SCAR_W, SCAR_L, SCAR_ANGLE = (2, 16), (10, 25), 45.0


def _position_image(h, w, c=3):
  """uint8 image whose pixel (y, x) is (y, x, (7y + 13x) % 256) in RGB, or y*w + x in gray (h*w <= 256)."""
  yy, xx = np.mgrid[0:h, 0:w]
  if c == 1:
    assert h * w <= 256
    return (yy * w + xx).astype(np.uint8)[..., None]
  assert h <= 256 and w <= 256
  return np.stack([yy, xx, (7 * yy + 13 * xx) % 256], -1).astype(np.uint8)


def _decode(img, c):
  """Source coordinates (y, x) shown by every pixel of a pasted position image."""
  if c == 1:
    v = img[..., 0].astype(np.int64)
    return v // img.shape[1], v % img.shape[1]
  return img[..., 0].astype(np.int64), img[..., 1].astype(np.int64)


def _rect(mask):
  ys, xs = np.nonzero(mask)
  return ys.min(), xs.min(), ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


@pytest.mark.parametrize('hw,c', [((256, 256), 3), ((48, 80), 3), ((200, 120), 3), ((12, 20), 1),
                                  ((20, 12), 1)])
def test_cutpaste_is_a_translated_rectangle_of_the_image_itself(hw, c):
  h, w = hw
  img = _position_image(h, w, c)
  yy, xx = np.mgrid[0:h, 0:w]
  for seed in range(40):
    out, mask = cutpaste.cutpaste(np.random.default_rng(seed), img, 'normal', jitter=0)
    assert out.shape == img.shape and out.dtype == np.uint8 and mask.shape == hw and mask.dtype == bool
    changed = np.any(out != img, -1)
    np.testing.assert_array_equal(changed, mask)          # the mask is exactly the changed pixels
    y0, x0, ph, pw = _rect(mask)
    assert mask.sum() == ph * pw                           # a full rectangle
    sy, sx = _decode(out, c)
    dy, dx = sy[mask] - yy[mask], sx[mask] - xx[mask]      # source - destination: one translation
    assert len(np.unique(dy)) == 1 and len(np.unique(dx)) == 1 and (dy[0], dx[0]) != (0, 0)
    # the source rectangle lies inside the image
    assert 0 <= y0 + dy[0] and y0 + dy[0] + ph <= h and 0 <= x0 + dx[0] and x0 + dx[0] + pw <= w


def test_cutpaste_area_and_aspect_ratios_follow_the_paper():
  h = w = 256
  areas, aspects = [], []
  for seed in range(600):
    g = cutpaste.cutpaste_geometry(np.random.default_rng(seed), (h, w), 'normal')
    ph, pw = g.size
    m = g.mask((h, w))
    assert m.sum() == ph * pw and _rect(m)[2:] == (ph, pw)
    # the drawn area and aspect are rounded to whole pixels: allow the rounding of each side (<= 0.5 px)
    lo_a, hi_a = (ph - .5) * (pw - .5) / (h * w), (ph + .5) * (pw + .5) / (h * w)
    assert hi_a >= AREA[0] and lo_a <= AREA[1], (ph, pw)
    assert (pw + .5) / (ph - .5) >= ASPECT[0] and (pw - .5) / (ph + .5) <= ASPECT[1], (ph, pw)
    areas.append(ph * pw / (h * w))
    aspects.append(pw / ph)
  areas, aspects = np.array(areas), np.array(aspects)
  assert abs(areas.mean() - np.mean(AREA)) < 0.006                     # U(0.02, 0.15)
  assert areas.min() < 0.03 and areas.max() > 0.14
  # log-uniform aspect on [0.3, 1] and [1, 3.3], each with probability 1/2
  assert abs((aspects < 1).mean() - 0.5) < 0.07
  low = aspects[aspects < 1]
  assert abs((low < np.sqrt(0.3)).mean() - 0.5) < 0.1                 # geometric midpoint of [0.3, 1]
  assert aspects.min() < 0.4 and aspects.max() > 2.8


def _fit_affine(out, inp):
  """Least-squares affine map inp -> out ([N,2] each); returns (2x2 linear part, rms residual)."""
  a = np.concatenate([inp, np.ones((len(inp), 1))], 1)
  coef, *_ = np.linalg.lstsq(a, out, rcond=None)
  res = out - a @ coef
  return coef[:2].T, float(np.sqrt((res ** 2).sum(1).mean()))


@pytest.mark.parametrize('hw', [(256, 256), (128, 512)])
def test_scar_is_a_rotated_thin_rectangle_in_the_paper_ranges(hw):
  h, w = hw
  if w > 256:   # position encoding needs sides <= 256: the geometry only (same scale sqrt(h*w)/256 = 1)
    widths, lengths = set(), set()
    for seed in range(1500):
      g = cutpaste.cutpaste_geometry(np.random.default_rng(seed), hw, 'scar')
      lengths.add(g.size[0])
      widths.add(g.size[1])
      assert -SCAR_ANGLE <= g.angle <= SCAR_ANGLE
    assert widths == set(range(SCAR_W[0], SCAR_W[1] + 1)) and lengths == set(range(SCAR_L[0], SCAR_L[1] + 1))
    return
  img = _position_image(h, w)
  yy, xx = np.mgrid[0:h, 0:w]
  angles, widths, lengths = [], [], []
  for seed in range(300):
    rng_seed = 1000 + seed
    out, mask = cutpaste.cutpaste(np.random.default_rng(rng_seed), img, 'scar', jitter=0)
    sy, sx = _decode(out, 3)
    changed = np.any(out != img, -1)
    # changed pixels are the pasted region, except pasted pixels that happen to show themselves
    assert not (changed & ~mask).any()
    assert np.array_equal(mask & ~changed, mask & (sy == yy) & (sx == xx))
    src = np.stack([sy[mask], sx[mask]], 1).astype(float)
    dst = np.stack([yy[mask], xx[mask]], 1).astype(float)
    length = int(src[:, 0].max() - src[:, 0].min() + 1)
    width = int(src[:, 1].max() - src[:, 1].min() + 1)
    assert SCAR_L[0] <= length <= SCAR_L[1] and SCAR_W[0] <= width <= SCAR_W[1]
    # every source pixel is in the source rectangle, and nearly all of it is shown (nearest neighbour)
    assert abs(mask.sum() - length * width) <= length + width
    g = cutpaste.cutpaste_geometry(np.random.default_rng(rng_seed), hw, 'scar')
    assert -SCAR_ANGLE <= g.angle <= SCAR_ANGLE
    # nearest-neighbour inverse mapping of a counter-clockwise rotation by t on screen (y down): source =
    # round(A @ destination + b), A = [[c, s], [-s, c]] in (y, x): every residual within half a pixel
    t = np.radians(g.angle)
    a = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    r = src - dst @ a.T
    r -= (r.max(0) + r.min(0)) / 2
    assert np.abs(r).max() <= 0.5 + 1e-6, np.abs(r).max()
    if max(length, width) >= 2 * min(length, width):   # long axis of the pasted pixels = angle (PCA)
      d = dst - dst.mean(0)
      v = np.linalg.eigh(d.T @ d)[1][:, -1]
      ang = np.degrees(np.arctan(v[1] / v[0])) if length > width else np.degrees(np.arctan(-v[0] / v[1]))
      tol = 2 + np.degrees(np.arctan(1.5 / max(length, width)))   # pixel quantisation of a short scar
      assert abs(ang - g.angle) < tol, (ang, g.angle, length, width)
      angles.append(ang)
    widths.append(width)
    lengths.append(length)
  angles = np.array(angles)
  assert angles.min() < -35 and angles.max() > 35 and abs(np.mean(angles)) < 8
  assert min(widths) <= 3 and max(widths) >= 15 and min(lengths) <= 11 and max(lengths) >= 24


def test_scar_rotation_is_counter_clockwise_on_screen():
  # the documented convention: a positive angle turns the scar counter-clockwise on screen, so walking down
  # the scar's own length (source rows) moves right in the image (its top end leans left)
  img = _position_image(256, 256)
  yy, xx = np.mgrid[0:256, 0:256]
  n = 0
  for seed in range(100):
    g = cutpaste.cutpaste_geometry(np.random.default_rng(seed), (256, 256), 'scar')
    if abs(g.angle) < 10:
      continue
    out, mask = cutpaste.paste(img, g)
    src_y = out[..., 0][mask].astype(float)
    slope = np.polyfit(src_y, xx[mask].astype(float), 1)[0]
    assert (slope > 0) == (g.angle > 0), (g.angle, slope)
    n += 1
  assert n > 50


def test_scar_sizes_scale_with_the_image():
  for hw, (wlo, whi), (llo, lhi) in [((240, 240), (2, 15), (9, 23)), ((32, 32), (1, 2), (1, 3)),
                                      ((512, 512), (4, 32), (20, 50))]:
    ws, ls = set(), set()
    for seed in range(1500):
      g = cutpaste.cutpaste_geometry(np.random.default_rng(seed), hw, 'scar')
      ls.add(g.size[0])
      ws.add(g.size[1])
    assert ws == set(range(wlo, whi + 1)) and ls == set(range(llo, lhi + 1)), (hw, sorted(ws), sorted(ls))


def test_mixed_picks_either_variant_with_probability_one_half():
  kinds = [cutpaste.cutpaste_geometry(np.random.default_rng(s), (64, 64), 'mixed').variant for s in range(400)]
  assert set(kinds) == {'normal', 'scar'} and abs(kinds.count('scar') / 400 - 0.5) < 0.08


def _luma(x):   # PIL "L" of an integer RGB image: ITU-R 601-2 luma, rounded
  return np.rint((x[..., 0] * 299 + x[..., 1] * 587 + x[..., 2] * 114) / 1000.0)


def _jitter_reference(patch, factors):
  """NumPy transcription of torchvision's PIL ColorJitter ops with given factors: brightness blends with
  black, contrast with the rounded mean luma, saturation with the luma image, hue shifts the HSV hue by
  uint8(hue·255)/256 of the circle; PIL truncates to uint8 after every op."""
  order, (fb, fc, fs, fh) = factors
  x = patch.astype(np.float64)
  gray = x.shape[-1] == 1
  import colorsys  # pylint: disable=g-import-not-at-top
  for op in order:
    if op == 0:
      x = x * fb
    elif op == 1:
      mean = np.floor((x[..., 0] if gray else _luma(x)).mean() + 0.5)
      x = mean + fc * (x - mean)
    elif op == 2 and not gray:
      x = _luma(x)[..., None] + fs * (x - _luma(x)[..., None])
    elif op == 3 and not gray:
      flat = x.reshape(-1, 3) / 255.0
      out = []
      shift = (int(fh * 255) % 256) / 256.0
      for r, g, b in flat:
        hh, ss, vv = colorsys.rgb_to_hsv(r, g, b)
        out.append(colorsys.hsv_to_rgb((hh + shift) % 1.0, ss, vv))
      x = np.rint(np.asarray(out).reshape(x.shape) * 255.0)
    x = np.floor(np.clip(x, 0, 255))
  return x


def test_jitter_factors_ranges_and_seeding():
  fs = [cutpaste.jitter_factors(np.random.default_rng(s)) for s in range(300)]
  for order, (b, c, s, h) in fs:
    assert sorted(order) == [0, 1, 2, 3]
    assert 0.9 <= b <= 1.1 and 0.9 <= c <= 1.1 and 0.9 <= s <= 1.1 and -0.1 <= h <= 0.1
  hs = np.array([f[1][3] for f in fs])
  assert hs.min() < -0.09 and hs.max() > 0.09
  assert cutpaste.jitter_factors(np.random.default_rng(3)) == fs[3]
  assert cutpaste.jitter_factors(np.random.default_rng(0), 0) is None


@pytest.mark.parametrize('c', [3, 1])
def test_jitter_patch_matches_a_numpy_reference(c):
  rng = np.random.default_rng(7)
  for seed in range(12):
    patch = rng.integers(20, 236, (9, 14, c)).astype(np.uint8)
    factors = cutpaste.jitter_factors(np.random.default_rng(seed))
    got = cutpaste.jitter_patch(patch, factors).astype(np.float64)
    ref = _jitter_reference(patch, factors)
    # PIL's HSV holds hue, saturation and value in uint8: a few grey levels after the hue shift
    tol = 1 if c == 1 else 12
    assert np.abs(got - ref).max() <= tol, (seed, np.abs(got - ref).max())
    assert np.abs(got - ref).mean() < (0.1 if c == 1 else 1.0), (seed, np.abs(got - ref).mean())


@pytest.mark.parametrize('variant', ['normal', 'scar'])
def test_jittered_paste_same_geometry_bounded_change(variant):
  img = np.random.default_rng(0).integers(30, 226, (96, 112, 3)).astype(np.uint8)
  for seed in range(20):
    plain, m0 = cutpaste.cutpaste(np.random.default_rng(seed), img, variant, jitter=0)
    jit, m1 = cutpaste.cutpaste(np.random.default_rng(seed), img, variant)
    np.testing.assert_array_equal(m0, m1)                       # geometry drawn before the jitter
    np.testing.assert_array_equal(jit[~m1], img[~m1])           # nothing changes outside the paste
    # the pasted pixels are the source pixels under one jitter: replay it on the un-jittered paste
    rng = np.random.default_rng(seed)
    cutpaste.cutpaste_geometry(rng, img.shape[:2], variant)
    factors = cutpaste.jitter_factors(rng)
    ref = _jitter_reference(plain[m1][None], factors)[0]
    diff = np.abs(jit[m1].astype(float) - ref)
    # reference on the pasted pixels (contrast mean over them, not over the whole patch): loose bound
    assert diff.mean() < 6, diff.mean()
    assert np.abs(jit[m1].astype(int) - plain[m1]).max() > 0   # the jitter does change the patch


def test_same_seed_same_output_different_seeds_differ():
  img = np.random.default_rng(1).integers(0, 256, (64, 48, 3)).astype(np.uint8)
  for variant in ('normal', 'scar', 'mixed'):
    a = cutpaste.cutpaste(np.random.default_rng(5), img, variant)
    b = cutpaste.cutpaste(np.random.default_rng(5), img, variant)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    masks = {cutpaste.cutpaste(np.random.default_rng(s), img, variant)[1].tobytes() for s in range(20)}
    assert len(masks) == 20


@pytest.mark.parametrize('shape', [(28, 28), (28, 28, 1), (32, 32, 3), (37, 91, 3), (91, 37, 1), (16, 300, 3),
                                   (240, 240, 3), (1, 1, 3), (2, 3), (5, 200, 3)])
def test_any_size_gray_and_rgb(shape):
  img = np.random.default_rng(2).integers(0, 256, shape).astype(np.uint8)
  for variant in ('normal', 'scar', 'mixed'):
    for seed in range(10):
      out, mask = cutpaste.cutpaste(np.random.default_rng(seed), img, variant)
      assert out.shape == img.shape and out.dtype == np.uint8 and mask.shape == shape[:2]
      assert mask.any()
      np.testing.assert_array_equal(out[~mask], img[~mask])   # nothing changes outside the paste


def test_bad_input_is_one_line_error():
  with pytest.raises(ValueError, match='uint8'):
    cutpaste.cutpaste(np.random.default_rng(0), np.zeros((8, 8, 3), np.float32))
  with pytest.raises(ValueError, match='variant'):
    cutpaste.cutpaste(np.random.default_rng(0), np.zeros((8, 8, 3), np.uint8), 'big')
  with pytest.raises(ValueError, match='not an additive noise'):
    anomalies.noise('cutpaste', np.random.default_rng(0), (8, 8, 3))


@pytest.mark.parametrize('mode,variant', [('cutpaste', 'normal'), ('cutpaste_scar', 'scar'),
                                          ('cutpaste_mixed', 'mixed')])
def test_make_anomaly_cutpaste_maps(mode, variant):
  x = np.random.default_rng(3).integers(0, 256, (40, 56, 3)).astype(np.uint8)
  ref, mask = cutpaste.cutpaste(np.random.default_rng(9), x, variant)
  img, gt = anomalies.make_anomaly('malformed_normal_gt', mode, np.random.default_rng(9), x)
  np.testing.assert_array_equal(img, ref)
  np.testing.assert_array_equal(gt, mask.astype(np.float32))
  assert gt.dtype == np.float32 and 0 < gt.sum() < gt.size
  for sup in ('malformed_normal', 'noise'):     # the other modes keep the all-ones map (spec §6.4)
    img2, gt2 = anomalies.make_anomaly(sup, mode, np.random.default_rng(9), x)
    np.testing.assert_array_equal(img2, ref)
    assert (gt2 == 1).all()
  # resampling (original-resolution noise) does not apply to CutPaste: ignored
  res = anomalies.Resampling((80, 112), 'nearest', (40, 56))
  np.testing.assert_array_equal(anomalies.make_anomaly('malformed_normal_gt', mode, np.random.default_rng(9), x,
                                                       resampling=res)[0], ref)
  with pytest.raises(ValueError, match='supervise_mode'):
    anomalies.make_anomaly('other', mode, np.random.default_rng(9), x)
  assert mode in anomalies.SYNTHETIC_MODES and mode not in anomalies.NOISE_MODES


def test_mask_stays_aligned_through_the_training_crop_and_flip():
  """The pipeline makes the anomaly at raw size, then crops/flips image and map jointly (Transform.train):
  the changed pixels of the net input are exactly the map after the transform."""
  try:   # the data layer moves Transform from input_pipeline to data/transforms.py
    from fcdd_jax.data.transforms import Transform  # pylint: disable=g-import-not-at-top
  except ImportError:
    from fcdd_jax.input_pipeline import Transform  # pylint: disable=g-import-not-at-top
  img = _position_image(40, 40)
  t = Transform(mean=np.zeros(3, np.float32), std=np.ones(3, np.float32), input_size=(32, 32),
                               raw_size=(40, 40), channels=3, train_geom='crop', hflip=True, noise_std=0.0)
  flips = set()
  for seed in range(30):
    anom, gt = anomalies.make_anomaly('malformed_normal_gt', 'cutpaste_mixed', np.random.default_rng(seed), img)
    xa, ga = t.train(anom, gt, np.random.default_rng([seed, 1]))
    x0, _ = t.train(img, np.zeros_like(gt), np.random.default_rng([seed, 1]))
    np.testing.assert_array_equal(np.any(xa != x0, -1), ga > 0)
    flips.add(bool(x0[0, 0, 1] > x0[0, -1, 1]))   # x channel decreasing left to right = flipped
  assert flips == {True, False}

"""Gaussian receptive-field upsampling against a direct NumPy transcription of Algorithm 1 (spec §4)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcdd_jax.models import nets as models
from fcdd_jax.models import receptive
from tests import references


def gaussian_kernel(r, std):
  """2-D kernel G = g ⊗ g of spec §4 (peak 1 for odd r, 0.25 for even r; not normalised)."""
  g = receptive.gaussian_kernel_1d(r, std)
  return np.outer(g, g)


@pytest.mark.parametrize('r,j,s,h,H,std', [
    (16, 4, 1.5, 7, 28, 1.2),     # FCDD_CNN28_W
    (22, 4, 1.5, 8, 32, 1.2),     # FCDD_CNN32_LW3K
    (62, 8, 3.5, 28, 224, 12.0),  # FCDD_CNN224_VGG*, MVTec
    (62, 8, 3.5, 28, 224, 8.0),   # ImageNet / VOC
    (59, 8, 0.0, 28, 224, 10.0),  # FCDD_CNN224 (odd r)
    (15, 4, 1.5, 7, 28, 2.0),     # another odd r
])
def test_upsample_equals_algorithm1(r, j, s, h, H, std):
  a = np.random.default_rng(r).random((3, h, h)).astype(np.float32)
  want = references.np_algorithm1(a.astype(np.float64), r, j, s, H, std)
  assert want.shape == (3, H, H)
  got = np.asarray(jax.jit(lambda x: receptive.upsample(x, receptive.Reception(r, j, s), H, std))(a))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
  got4 = np.asarray(receptive.upsample(a[..., None], receptive.Reception(r, j, s), H, std))
  np.testing.assert_allclose(got4, got, rtol=1e-6)


@pytest.mark.parametrize('r,std,total', [(16, 1.2, 4.016), (22, 1.2, 4.016), (62, 12, 236.4), (62, 8, 110.8),
                                         (59, 10, 624.3)])
def test_kernel_sums_and_peaks(r, std, total):
  k = gaussian_kernel(r, std)
  assert k.shape == (r, r)
  assert k.sum() == pytest.approx(total, abs=0.05)
  assert k.max() == pytest.approx(1.0 if r % 2 else 0.25)
  np.testing.assert_allclose(k, np.outer(references.np_window(r, std), references.np_window(r, std)), rtol=1e-12)


def test_default_std():
  assert receptive.default_std(16) == pytest.approx(np.log10(0.45 * 16 + 1) + 0.25)
  assert receptive.default_std(62) == 10.0
  a = np.random.default_rng(0).random((1, 7, 7)).astype(np.float32)
  want = references.np_algorithm1(a, 16, 4, 1.5, 28, receptive.default_std(16))
  # loss.gauss_std is passed as it is configured: None, 0 (the configs' default) or < 0 mean the default sigma
  for std in (None, 0.0, -1.0):
    np.testing.assert_allclose(np.asarray(receptive.upsample(a, receptive.Reception(16, 4, 1.5), 28, std)), want,
                               rtol=1e-5, atol=1e-7)


def test_upsample_gradient_is_the_transpose():
  rec = receptive.Reception(16, 4, 1.5)
  a = jnp.asarray(np.random.default_rng(1).random((2, 7, 7)), jnp.float32)
  w = np.random.default_rng(2).random((2, 28, 28))
  grad = jax.grad(lambda x: jnp.sum(receptive.upsample(x, rec, 28, 1.2) * w))(a)
  eps = 1e-3
  e = np.zeros((2, 7, 7), np.float32)
  e[1, 3, 2] = eps
  f = lambda x: float(np.sum(references.np_algorithm1(np.asarray(x, np.float64), 16, 4, 1.5, 28, 1.2) * w))
  fd = (f(np.asarray(a) + e) - f(np.asarray(a) - e)) / (2 * eps)
  assert float(grad[1, 3, 2]) == pytest.approx(fd, rel=1e-3)


@pytest.mark.parametrize('name,rjs', [('FCDD_CNN28', (16, 4, 1.5)), ('FCDD_CNN28_W', (16, 4, 1.5)),
                                      ('FCDD_CNN32', (32, 4, 1.5)), ('FCDD_CNN32_S', (18, 4, 1.5)),
                                      ('FCDD_CNN32_LW3K', (22, 4, 1.5)), ('FCDD_CNN224', (59, 8, 0.0)),
                                      ('FCDD_CNN224_W', (59, 8, 0.0)), ('FCDD_CNN224_VGG', (62, 8, 3.5)),
                                      ('FCDD_CNN224_VGG_F', (62, 8, 3.5)), ('FCDD_CNN224_VGG_NOPT', (62, 8, 3.5))])
def test_reception_of_every_fcdd_net(name, rjs):
  """Spec §2 values, available on the unbound module and on the class."""
  net = models.create(name)
  assert tuple(net.reception) == rjs
  assert tuple(type(net).reception) == rjs
  assert tuple(models.reception(name)) == rjs


def np_algorithm1_rect(a, r, j, s, H, W, std):
  """Algorithm 1 (spec §4) for non-square maps and outputs: the 2-D transposed convolution with G = g (x) g,
  stride j, output padding per axis (H - (h-1)j - 1 or - 2 for even r), then the crop per axis."""
  n, h, w = a.shape
  G = np.outer(references.np_window(r, std), references.np_window(r, std))
  extra = 1 if r % 2 else 2
  fh = (h - 1) * j + r + (H - (h - 1) * j - extra)
  fw = (w - 1) * j + r + (W - (w - 1) * j - extra)
  out = np.zeros((n, max(fh, (h - 1) * j + r), max(fw, (w - 1) * j + r)))
  for y in range(h):
    for x in range(w):
      out[:, y * j:y * j + r, x * j:x * j + r] += a[:, y, x, None, None] * G
  pad, si = (r - 1) // 2, int(s)
  return out[:, pad - si:pad - si + H, pad - si:pad - si + W]


@pytest.mark.parametrize('r,j,s,h,w,H,W,std', [
    (62, 8, 3.5, 4, 13, 32, 102, 12.0),   # VGG cells of a wide image
    (62, 8, 3.5, 31, 99, 248, 793, 10.0),  # custom-data scale of a 640x200 file
    (59, 8, 0.0, 13, 5, 100, 37, 10.0),   # odd r, tall, sizes not multiples of j
    (18, 4, 1.5, 8, 26, 32, 102, 1.2),    # FCDD_CNN32_S on a 32x102 input
    (16, 4, 1.5, 11, 8, 45, 30, 1.2),     # cells dropped at the bottom (45 rows, 11 cells)
])
def test_upsample_non_square_equals_algorithm1(r, j, s, h, w, H, W, std):
  a = np.random.default_rng(h * w).random((2, h, w)).astype(np.float32)
  want = np_algorithm1_rect(a.astype(np.float64), r, j, s, H, W, std)
  assert want.shape == (2, H, W)
  got = np.asarray(jax.jit(lambda x: receptive.upsample(x, receptive.Reception(r, j, s), (H, W), std))(a))
  assert got.shape == (2, H, W)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


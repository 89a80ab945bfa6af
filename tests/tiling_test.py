"""tiling: the stitched low-resolution map and heatmap equal one pass over the whole image, for every FCDD net
and odd image sizes; the host upsampling equals Algorithm 1 (NumPy reference)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcdd_jax.models import nets as models
from fcdd_jax.models import receptive
from fcdd_jax.models import tiling
from tests import references


def _net_and_variables(name, seed=0):
  """A float32 net of any input size with random weights and random BatchNorm running statistics (so that
  evaluation-mode BatchNorm is a non-trivial per-channel affine map)."""
  net = models.create(name, any_size=True, dtype=jnp.float32)
  c = models.input_shape(name)[2]
  v = net.init(jax.random.PRNGKey(seed), jnp.zeros((1, 64, 64, c)), train=False)
  rng = np.random.default_rng(seed)
  def perturb(path, x):
    key = str(path[-1])
    if 'mean' in key:
      return jnp.asarray(rng.normal(0, 0.2, x.shape), jnp.float32)
    if 'var' in key:
      return jnp.asarray(rng.uniform(0.5, 2.0, x.shape), jnp.float32)
    return x
  stats = jax.tree_util.tree_map_with_path(perturb, v.get('batch_stats', {}))
  params = dict(v['params'])   # outputs of order 1, so that float32 pseudo-Huber values are well conditioned
  params['final'] = dict(params['final'], kernel=params['final']['kernel'] * 300.0)
  return net, {'params': params, 'batch_stats': stats}


SMALL = [n for n in models.FCDD_NAMES if models.input_shape(n)[0] < 224]
LARGE = [n for n in models.FCDD_NAMES if models.input_shape(n)[0] >= 224]


def test_every_fcdd_net_is_covered():
  assert set(SMALL) | set(LARGE) == set(models.FCDD_NAMES) and len(models.FCDD_NAMES) == 10


def _check_stitched_equals_whole(name, h, w, tile, batch=2):
  net, variables = _net_and_variables(name)
  rec = models.reception(name)
  c = models.input_shape(name)[2]
  x = np.random.default_rng(h * w).normal(size=(batch, h, w, c)).astype(np.float32)
  whole = np.asarray(jax.jit(lambda v, xx: jnp.sqrt(net.apply(v, xx, train=False)[..., 0] ** 2 + 1) - 1)(
      variables, x))
  tn = tiling.TiledNet(net, variables, rec, tile=tile, channels=c)
  rows, cols = tn.windows(h, w)
  assert len(rows) > 2 and len(cols) > 2, 'the test must stitch interior tiles on both axes'
  asked = []
  def region(y0, y1, x0, x1):
    asked.append((y0, y1, x0, x1))
    return x[:, y0:y1, x0:x1]
  low = tn.lowres(region, h, w, batch)
  assert low.shape == whole.shape
  assert all(y0 % rec.j == 0 and x0 % rec.j == 0 for y0, _, x0, _ in asked)
  assert max(y1 - y0 for y0, y1, _, _ in asked) < h and max(x1 - x0 for _, _, x0, x1 in asked) < w
  np.testing.assert_allclose(low, whole, rtol=2e-5, atol=1e-6 + 2e-5 * np.abs(whole).max())
  # the heatmap: host upsampling of the stitched map == the package's upsampling of the whole map
  std = 1.2 if rec.r < 32 else 10.0
  heat = tiling.upsample(low[-1], rec, (h, w), std)
  want = np.asarray(receptive.upsample(jnp.asarray(whole[-1:]), rec, (h, w), std))[0]
  np.testing.assert_allclose(heat, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize('name', SMALL)
def test_stitched_equals_whole_small_nets(name):
  _check_stitched_equals_whole(name, 45, 67, tile=8)


@pytest.mark.parametrize('name', LARGE)
def test_stitched_equals_whole_224_nets(name):
  _check_stitched_equals_whole(name, 157, 203, tile=48, batch=1)


def test_misaligned_tiles_break_it():
  """The guard of the design: a window whose start is not a multiple of j gives different cells (so the test
  above would catch an off-by-one in the window starts)."""
  name = 'FCDD_CNN32_S'
  net, variables = _net_and_variables(name)
  x = np.random.default_rng(1).normal(size=(1, 40, 40, 3)).astype(np.float32)
  f = jax.jit(lambda v, xx: net.apply(v, xx, train=False)[..., 0])
  whole = np.asarray(f(variables, x))
  shifted = np.asarray(f(variables, x[:, :, 1:]))    # window start 1: cell t is not whole cell t + 1/4
  aligned = np.asarray(f(variables, x[:, :, 4:]))    # window start 4 = j: cell t is whole cell t + 1 inside
  a, b = tiling.dependency_range(models.reception(name))
  assert (a, b) == (-7, 10)
  inner = slice(2, 5)   # window cells t with 4t - 7 >= 0 and 4t + 10 < 36: their range stays inside
  np.testing.assert_allclose(aligned[:, :, inner], whole[:, :, 3:6], rtol=1e-5, atol=1e-5)
  assert not np.allclose(shifted[:, :, inner], whole[:, :, 3:6], atol=1e-3)
  assert not np.allclose(shifted[:, :, inner], whole[:, :, 2:5], atol=1e-3)


@pytest.mark.parametrize('n,m', [(45, 5), (203, 25), (4096, 512), (8, 1)])   # VGG: m = n // 8
def test_axis_windows_cover_every_cell_once(n, m):
  rec = receptive.Reception(62, 8, 3.5)
  a, b = tiling.dependency_range(rec)
  assert (a, b) == (-27, 34)
  for cells in (1, 3, 7, 64, 1000):
    ws = tiling.axis_windows(n, m, rec, cells)
    kept = np.concatenate([np.arange(w.c0, w.c1) for w in ws])
    np.testing.assert_array_equal(kept, np.arange(m))
    for w in ws:
      assert w.u % 8 == 0 and 0 <= w.u < w.v <= n
      assert w.u == 0 or w.c0 * 8 + a >= w.u           # every kept cell's range starts inside the window
      assert w.v == n or (w.c1 - 1) * 8 + b < w.v      # ... and ends inside it


@pytest.mark.parametrize('r,j,s,h,w,H,W,std', [
    (62, 8, 3.5, 32, 512, 256, 4096, 10.0),   # an AITEX strip at native size
    (59, 8, 0.0, 13, 5, 100, 37, 10.0),
    (16, 4, 1.5, 11, 8, 45, 30, 1.2),
])
def test_host_upsample_equals_algorithm1(r, j, s, h, w, H, W, std):
  a = np.random.default_rng(h * w).random((1, h, w))
  n, hh, ww = a.shape
  G = np.outer(references.np_window(r, std), references.np_window(r, std))
  full = np.zeros(((hh - 1) * j + r + H, (ww - 1) * j + r + W))
  for y in range(hh):
    for x in range(ww):
      full[y * j:y * j + r, x * j:x * j + r] += a[0, y, x] * G
  pad, si = (r - 1) // 2, int(s)
  want = full[pad - si:pad - si + H, pad - si:pad - si + W]
  got = tiling.upsample(a[0].astype(np.float32), receptive.Reception(r, j, s), (H, W), std)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_image_score_matches_losses():
  from fcdd_jax.models import losses
  rng = np.random.default_rng(0)
  low, up = rng.random((7, 9)).astype(np.float32), rng.random((50, 70)).astype(np.float32)
  for spec in ('mean', 'max', 'top1%', 'top10%'):
    top = losses.parse_image_score(spec)
    want = float(losses.fcdd_image_scores(jnp.asarray(low[None]), jnp.asarray(up[None]), top)[0])
    assert abs(tiling.image_score(low, up, top) - want) < 1e-5, spec

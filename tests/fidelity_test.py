"""Parity of the custom/MVTec data path with the authors' runners (issue 13), each against a NumPy
transcription of the reference behaviour written here:

1. malformed_normal noise drawn at the ORIGINAL resolution, then resized (reference custom runner);
2. which loss a layout gets (GT-map loss only with maps, spec §3.1/§3.2);
3. data.preproc for custom data (aug1 / none, anything else is an error);
4. every epoch sees every training image once: ceil(n / batch) steps, the last batch padded and masked in the
   loss and in the BatchNorm statistics, 1-device = multi-device;
5. one nearest resize original -> 224 with maps, the >= 1 blob rule redraws, no duplicate blob centres.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from fcdd_jax import input_pipeline
from fcdd_jax.models import layers
from fcdd_jax.models import nets as models
from fcdd_jax.pipeline import run
from fcdd_jax.pipeline import steps
from fcdd_jax.data import anomalies
from fcdd_jax.data import transforms


# ----------------------------------------------------------------------------------------------------
# NumPy transcription of the reference's confetti (fcdd/datasets/noise.py confetti_noise + noise_modes.py
# 'confetti' + smooth_noise) for one image (n=1, c=3): Bernoulli centre mask redrawn until non-empty, square
# sizes uniform in 8..54 with one colour per size group, rotation of a +-0.75 b window with nearest
# interpolation (skimage, as the reference), kornia Gaussian blur 25x25 sigma 5 with reflect borders, `.int()`.

def _ref_map(rng, h, w, p, fill=None, colorrange=None):
  from skimage.transform import rotate  # pylint: disable=g-import-not-at-top
  mask = rng.random((h, w)) < p
  while not mask.any():
    mask = rng.random((h, w)) < p
  res = np.zeros((3, h, w), np.int64)
  idx = np.argwhere(mask)
  shapes = list(range(8, 55))
  picks = rng.uniform(0, len(shapes), len(idx)).astype(int)
  for k, b in enumerate(shapes):
    sel = idx[picks == k]
    if not len(sel):
      continue
    off = np.arange(-(b // 2) if b % 2 else -(b // 2) + 1, b // 2 + 1)
    ys, xs = np.broadcast_arrays(np.clip(sel[:, 0, None, None] + off[None, :, None], 0, h - 1),
                                 np.clip(sel[:, 1, None, None] + off[None, None, :], 0, w - 1))
    val = rng.integers(colorrange[0], colorrange[1], 3) if colorrange else np.full(3, fill)
    for c in range(3):
      res[c, ys, xs] = val[c]
  for pick, (cy, cx) in zip(picks, idx):
    rot, b = rng.uniform(-45, 45), shapes[pick]
    y0, y1 = max(cy - int(np.floor(0.75 * b)), 0), min(cy + int(np.ceil(0.75 * b)), h - 1)
    x0, x1 = max(cx - int(np.floor(0.75 * b)), 0), min(cx + int(np.ceil(0.75 * b)), w - 1)
    win = res[:, y0:y1, x0:x1].transpose(1, 2, 0).astype(np.float64)
    r = rotate(win, rot, order=0, cval=0, center=(cy - y0, cx - x0), clip=False, preserve_range=True)
    res[:, y0:y1, x0:x1] = r.transpose(2, 0, 1).astype(np.int64)
  return res


def _ref_confetti(rng, h, w):
  n = _ref_map(rng, h, w, 0.000018, colorrange=(-256, 0)) + _ref_map(rng, h, w, 0.000012, fill=-255)
  blurred = [ndimage.gaussian_filter(n[c].astype(np.float64), 5.0, mode='mirror', truncate=12 / 5.0) for c in range(3)]
  return np.trunc(np.stack(blurred, -1))


def _pil_resize(layer, size, nearest=False):
  return np.stack([np.asarray(Image.fromarray(layer[..., c].astype(np.float32), 'F').resize(
      size[::-1], Image.NEAREST if nearest else Image.BILINEAR)) for c in range(layer.shape[-1])], -1)


def _spot_stats(layers, thr=8):
  """Mean number of spots (connected regions where the noise changes a pixel by >= thr grey levels), covered
  fraction, mean spot size (sqrt of the area, pixels of the stored image)."""
  spots, cover, sizes = [], [], []
  for n in layers:
    on = (np.abs(n) >= thr).any(-1)
    lab, k = ndimage.label(on)
    spots.append(k)
    cover.append(on.mean())
    sizes.extend(np.sqrt(np.bincount(lab.ravel())[1:]))
  return np.mean(spots), np.mean(cover), np.mean(sizes)


def test_confetti_at_the_original_resolution_matches_the_reference_statistics():
  """A 1024² original stored at 248²: the reference draws confetti at 1024² and resizes; so do we."""
  n = 14
  ref = _spot_stats([_pil_resize(_ref_confetti(np.random.default_rng(s), 1024, 1024), (248, 248))
                     for s in range(n)])
  res = anomalies.resampling((1024, 1024), 'shorter', (248, 248))
  ours = _spot_stats([res.noise('confetti', np.random.default_rng(100 + s), 3) for s in range(n)])
  at_stored = _spot_stats([anomalies.confetti(np.random.default_rng(200 + s), (248, 248, 3)) for s in range(n)])
  # reference: ~27 specks covering ~7 % of the image, ~12 px each; drawn at 248² instead: ~3 blobs of ~47 px
  assert 20 < ref[0] < 35 and 0.04 < ref[1] < 0.10 and 9 < ref[2] < 15
  assert abs(ours[0] - ref[0]) < 5 and abs(ours[1] - ref[1]) < 0.2 * ref[1] and abs(ours[2] - ref[2]) < 0.15 * ref[2]
  assert at_stored[0] < 6 and at_stored[2] > 30                      # the old behaviour fails the above


def test_resampling_is_the_resize_of_the_blurred_layer():
  rng = np.random.default_rng(0)
  layer = anomalies._confetti_layer(rng, (300, 420, 3))  # pylint: disable=protected-access
  blurred = np.stack([ndimage.gaussian_filter(layer[..., c].astype(np.float64), 5.0, mode='mirror',
                                              truncate=12 / 5.0) for c in range(3)], -1)
  # shorter side to 248 (bilinear, antialiased) + centre crop, as input_pipeline.resize_shorter_crop
  nw = int(248 * 420 / 300)
  want = _pil_resize(blurred, (248, nw))[:, (nw - 248) // 2:(nw - 248) // 2 + 248]
  got = anomalies.resampling((300, 420), 'shorter', (248, 248)).apply(layer, blur_scale=1.0)
  np.testing.assert_allclose(got, want, atol=1e-3)
  # nearest squash: exactly the reference's truncated map sampled by PIL's nearest resize
  want = _pil_resize(np.trunc(np.round(blurred, 4)), (224, 224), nearest=True)
  got = anomalies.resampling((300, 420), 'nearest', (224, 224)).apply(layer, blur_scale=1.0)
  np.testing.assert_array_equal(got, want)
  # the matrices are PIL's resize of images too (uint8 rounding aside)
  img = rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)
  got = anomalies.resampling((300, 420), 'shorter', (248, 248)).apply(img)
  assert np.abs(got - transforms.resize_shorter_crop(img, 248)).max() <= 1.0


def test_blob_centres_are_distinct_and_at_least_one_is_redrawn():
  # reference: centres are a per-pixel Bernoulli mask (never twice the same pixel); an empty mask is redrawn
  rng = np.random.default_rng(0)
  ys, xs = anomalies._centres(rng, 20, 20, 0.5)  # pylint: disable=protected-access
  assert len(set(zip(ys.tolist(), xs.tolist()))) == len(ys) > 150
  lam = 100 * 100 * 5e-5                                               # 0.5 centres expected
  counts = np.array([anomalies._centres(rng, 100, 100, 5e-5)[0].size for _ in range(4000)])  # pylint: disable=protected-access
  p1 = lam * np.exp(-lam) / (1 - np.exp(-lam))                         # zero-truncated Poisson: 0.771
  assert counts.min() == 1 and abs((counts == 1).mean() - p1) < 0.025  # setting n=0 to 1 would give 0.91


# ----------------------------------------------------------------------------------------------------
# Custom data through the pipeline

def _tree(root, layout, size=(60, 80), n_train=4, maps=False, value=None):
  """A custom data folder: 'mvtec' (train/good, test/{good,crack}[, ground_truth]) or 'ovr'."""
  rng = np.random.default_rng(0)
  def save(path, shape=size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    a = (rng.integers(value - 10, value + 10, shape + (3,), dtype=np.uint8) if value is not None
         else rng.integers(0, 256, shape + (3,), dtype=np.uint8))
    Image.fromarray(a).save(path)
  if layout == 'mvtec':
    for i in range(n_train):
      save(os.path.join(root, 'train', 'good', f'{i}.png'))
    for d in ('crack', 'good'):
      for i in range(2):
        save(os.path.join(root, 'test', d, f'{i}.png'))
        if maps and d == 'crack':
          m = np.zeros(size, np.uint8)
          m[10:30, 20:50] = 255
          os.makedirs(os.path.join(root, 'ground_truth', d), exist_ok=True)
          Image.fromarray(m).save(os.path.join(root, 'ground_truth', d, f'{i}_mask.png'))
  else:
    for c in ('a', 'b'):
      for i in range(n_train):
        save(os.path.join(root, 'train', c, f'{i}.png'))
        save(os.path.join(root, 'test', c, f'{i}.png'))


def _custom_cfg(make_config, root, tmp_path, **kv):
  return make_config(**{'batch_size': 4, 'data.name': 'custom', 'data.root': str(root),
                        'data.cache_dir': str(tmp_path / 'cache'), **kv})


# The reference (spec §3.1/§3.2, §5.9): the GT-map loss iff the dataset yields maps: MVTec always, custom
# data with -gtms (here: ground_truth/ or test_maps/ present) for every supervise mode, custom without never.
REFERENCE_LOSS = {('custom', False): 'label', ('custom', True): 'gtmap', ('mvtec', True): 'gtmap'}


@pytest.mark.parametrize('maps', [False, True])
@pytest.mark.parametrize('mode', ['malformed_normal', 'noise'])
def test_which_loss_a_layout_gets(maps, mode, tmp_path, make_config):
  _tree(str(tmp_path / 'd'), 'mvtec', maps=maps)
  extra = {'data.noise_mode': 'confetti'}
  p = input_pipeline.create(_custom_cfg(make_config, tmp_path / 'd', tmp_path, **{'data.supervise_mode': mode, **extra}))
  assert ('gtmap' if p.info.train_gtmaps else 'label') == REFERENCE_LOSS[('custom', maps)]
  assert ('gtmap' in p.global_train_batch(0)) == p.info.train_gtmaps


def test_custom_preproc_none_and_unknown(tmp_path, make_config):
  root = tmp_path / 'd'
  _tree(str(root), 'ovr', size=(50, 90))
  for bad in ('lcnaug1', 'lcn', 'aug2'):
    with pytest.raises(ValueError, match=f"preproc='{bad}' is not available for custom data; allowed: aug1, none"):
      input_pipeline.create(_custom_cfg(make_config, root, tmp_path, **{'data.preproc': bad}))
  # none (reference): Resize((224, 224)) bilinear -> ToTensor -> Normalize for train and test, no augmentation;
  # mean/std over the nominal training images squashed to 224
  p = input_pipeline.create(_custom_cfg(make_config, root, tmp_path, **{'data.preproc': 'none',
                                                           'data.supervise_mode': 'unsupervised'}))
  orig = np.asarray(Image.open(root / 'train' / 'a' / '0.png'))
  squashed = np.asarray(Image.fromarray(orig).resize((224, 224), Image.BILINEAR)).astype(np.float64) / 255
  allx = np.stack([np.asarray(Image.open(root / 'train' / 'a' / f'{i}.png').resize((224, 224), Image.BILINEAR))
                   for i in range(4)]).astype(np.float64) / 255
  mean, std = allx.mean((0, 1, 2)), allx.std((0, 1, 2))
  np.testing.assert_allclose(p.transform.test(p.train_images[0]), (squashed - mean) / std, atol=1e-5)
  x, _ = p.transform.train(p.train_images[0], None, np.random.default_rng(0))
  np.testing.assert_allclose(x, (squashed - mean) / std, atol=1e-5)
  # aug1 (default) stores the shorter side at 248 + centre crop and keeps the augmentation
  q = input_pipeline.create(_custom_cfg(make_config, root, tmp_path))
  assert q.train_images.shape[1:] == (248, 248, 3) and q.transform.jitter and q.transform.hflip


def test_with_maps_one_nearest_resize_from_the_original(tmp_path, make_config):
  """Reference -gtms aug1: train RandomChoice{Resize((248,248), NEAREST) -> RandomCrop(224), Resize((224,224),
  NEAREST)}, test Resize((224,224), NEAREST), all from the original (not 248 -> 224)."""
  root = str(tmp_path / 'd')
  _tree(root, 'mvtec', size=(301, 257), maps=True)
  p = input_pipeline.create(_custom_cfg(make_config, root, tmp_path))
  near = lambda path, s: np.asarray(Image.open(path).convert('RGB').resize(s, Image.NEAREST))
  np.testing.assert_array_equal(p.train_images[1], near(os.path.join(root, 'train', 'good', '1.png'), (248, 248)))
  np.testing.assert_array_equal(p.train_images_input[1], near(os.path.join(root, 'train', 'good', '1.png'),
                                                              (224, 224)))
  np.testing.assert_array_equal(p.test_images[0], near(os.path.join(root, 'test', 'crack', '0.png'), (224, 224)))
  m = np.asarray(Image.open(os.path.join(root, 'ground_truth', 'crack', '0_mask.png')).resize((224, 224), Image.NEAREST))
  np.testing.assert_array_equal(p.test_masks[0] > 0, m > 0)
  two_step = np.asarray(Image.fromarray(near(os.path.join(root, 'test', 'crack', '0.png'), (248, 248))).resize(
      (224, 224), Image.NEAREST))
  assert (two_step != p.test_images[0]).any()                        # the two ways differ on this image
  np.testing.assert_array_equal(transforms.make_test_transform(p.info.preprocessing)(
      np.asarray(Image.open(os.path.join(root, 'test', 'crack', '0.png')))), p.transform.test(p.test_images[0]))
  # both training branches are taken and each yields a 224 image with its map
  b = p.global_train_batch(0)
  assert b['image'].shape == (4, 224, 224, 3) and b['gtmap'].shape == (4, 224, 224)


def test_malformed_normal_on_large_originals_gives_many_small_specks(tmp_path, make_config):
  """Nearly flat 1024² originals: the anomalies the pipeline makes carry many small dark specks (reference), not a
  few large blobs (noise drawn at the stored 248²)."""
  root = str(tmp_path / 'd')
  _tree(root, 'mvtec', size=(1024, 1024), n_train=2, value=150)
  p = input_pipeline.create(_custom_cfg(make_config, root, tmp_path, **{'data.supervise_mode': 'malformed_normal',
                                                           'data.noise_mode': 'confetti'}))
  assert p.train_original_sizes.tolist() == [[1024, 1024]] * 2 and not p.info.train_gtmaps
  spots = []
  for row in range(12):
    x, label, _ = p.example(0, row, 0)
    if label == 1:
      v = x.mean(-1)
      dark = v < np.median(v) - 5 * p.transform.std.mean() ** -1 / 255   # darkened by > 5 grey levels
      spots.append(ndimage.label(dark)[1])
  assert len(spots) >= 3 and np.mean(spots) > 12             # ~22 in a 224 crop; drawn at 248²: ~3


# ----------------------------------------------------------------------------------------------------
# Every image once per epoch: ceil(n / batch) steps, padded last batch

@pytest.mark.parametrize('n,steps', [(1, 1), (100, 1), (150, 2), (257, 3)])
def test_steps_per_epoch(n, steps):
  # reference: a DataLoader without drop_last over n images yields ceil(n / batch) batches per epoch
  assert input_pipeline.steps_per_epoch(n, 1, 128) == steps == -(-n // 128)


def test_every_epoch_sees_every_image_once_with_a_padded_last_batch(make_config):
  c = make_config(**{'batch_size': 128, 'data.demo_num_train': 150, 'data.supervise_mode': 'unsupervised'})
  p = input_pipeline.create(c)
  assert p.info.steps_per_epoch == 2 and p.info.num_train == 150
  p.transform.hflip, p.transform.noise_std = False, 0.0            # rows then identify their source image
  ref = np.stack([p.transform.test(im) for im in p.train_images]).reshape(150, -1)
  for epoch in range(2):
    b0, b1 = p.global_train_batch(2 * epoch), p.global_train_batch(2 * epoch + 1)
    assert 'valid' not in b0 and b1['valid'].tolist() == [1] * 22 + [0] * 106
    assert not b1['image'][22:].any() and not b1['label'][22:].any()
    rows = np.concatenate([b0['image'], b1['image'][:22]]).reshape(150, -1)
    src = [int(np.argmin(np.abs(ref - r).sum(1))) for r in rows]
    assert sorted(src) == list(range(150))                          # each image exactly once
  # every process adds the key to its slice of the padded batch
  halves = [input_pipeline.create(c, i, 2).train_batches(1) for i in range(2)]
  parts = [next(h) for h in halves]
  assert [q['valid'].sum() for q in parts] == [22, 0]
  # the per-epoch schedule counts the padded step in its epoch (reference: scheduler.step() once per epoch)
  c.optim.schedule, c.optim.lr, c.optim.gamma = 'lambda', 1.0, 0.5
  fn = run.learning_rate_fn(c, p.info.steps_per_epoch)
  assert [float(fn(jnp.int32(s))) for s in range(6)] == [1, 1, 0.5, 0.5, 0.25, 0.25]


def _step_setup(make_config, name='FCDD_CNN32_S', remat=None, gtmaps=False):
  cfg = make_config('default')
  cfg.model.name = name
  cfg.optim.name, cfg.optim.lr = 'sgd', 0.1
  model = models.create(name, remat=remat)
  shape = models.input_shape(name)
  state = jax.jit(functools.partial(run.create_train_state, cfg, model, shape, steps_per_epoch=10))(
      jax.random.PRNGKey(0))
  scfg = run.StepConfig(objective='fcdd', gtmaps=gtmaps, reception=model.reception, gauss_std=1.2,
                          image_size=shape[:2])
  return state, scfg, shape


@pytest.mark.parametrize('remat,gtmaps', [(True, False), (False, True)])
def test_padded_rows_change_neither_loss_nor_batchnorm(remat, gtmaps, make_config):
  """One step on 5 real rows padded to 8 = one step on the 5 rows alone (loss, gradient, params, running
  statistics), with the fused blocks (remat) and without."""
  state, scfg, shape = _step_setup(make_config, remat=remat, gtmaps=gtmaps)
  rng = np.random.default_rng(0)
  real = {'image': rng.normal(size=(5,) + shape).astype(np.float32), 'label': np.array([0, 1, 0, 1, 1], np.int32)}
  if gtmaps:
    real['gtmap'] = (rng.random((5,) + shape[:2]) < 0.3).astype(np.float32) * real['label'][:, None, None]
  pad = {k: np.concatenate([v, np.full((3,) + v.shape[1:], 9, v.dtype)]) for k, v in real.items()}
  pad['valid'] = np.array([1] * 5 + [0] * 3, np.float32)
  step = jax.jit(functools.partial(steps.train_step, cfg=scfg))
  key = jax.random.PRNGKey(1)
  s1, m1 = step(state, real, key)
  s2, m2 = step(state, pad, key)
  np.testing.assert_allclose(m2['loss'], m1['loss'], rtol=1e-5)
  np.testing.assert_allclose(m2['l2_grads'], m1['l2_grads'], rtol=1e-4)
  for a, b in zip(jax.tree.leaves((s2.params, s2.batch_stats)), jax.tree.leaves((s1.params, s1.batch_stats))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # without the mask the padding rows do change the step (the test can fail)
  s3, m3 = step(state, {k: v for k, v in pad.items() if k != 'valid'}, key)
  assert abs(float(m3['loss']) - float(m1['loss'])) > 1e-3


@pytest.mark.parametrize('remat', [None, False])
def test_padded_step_is_the_same_on_1_and_all_devices(make_config, remat):
  """None: the CPU default (fused blocks); False: the GPU/TPU default (plain Flax layers, pools by
  `layers.pool_first_max`), here sharded over the test process's devices as on a pod, the last device holding
  padding rows only."""
  state, scfg, shape = _step_setup(make_config, remat=remat)
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(16,) + shape).astype(np.float32), 'label': np.arange(16, dtype=np.int32) % 2,
           'valid': (np.arange(16) < 16 - 16 // jax.device_count() - 1).astype(np.float32)}   # 7 of 16 on 2
  out = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = jax.sharding.Mesh(np.array(devices), ('data',))
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
    step = jax.jit(functools.partial(steps.train_step, cfg=scfg), in_shardings=(repl, data, repl),
                   out_shardings=(repl, repl))
    s, m = step(jax.device_put(state, repl), jax.device_put(batch, data), jax.random.PRNGKey(1))
    out.append((jax.device_get(m['loss']), jax.device_get(s.params), jax.device_get(s.batch_stats)))
  for a, b in zip(jax.tree.leaves(out[0]), jax.tree.leaves(out[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_masked_batch_norm_value_and_gradient():
  """masked_batch_norm (custom VJP) against autodiff of the plain formula on the real rows only."""
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(6, 4, 4, 3)), jnp.float32)
  mask = jnp.asarray([1, 0, 1, 1, 0, 1], jnp.float32)
  scale, bias = jnp.asarray([1.5, 0.5, 2.0]), jnp.asarray([0.1, -0.2, 0.0])
  g = jnp.asarray(rng.normal(size=(6, 4, 4, 3)), jnp.float32) * mask[:, None, None, None]

  def plain(z, scale, bias):
    real = z[np.array([0, 2, 3, 5])]
    mu, var = real.mean((0, 1, 2)), real.var((0, 1, 2))
    return (z - mu) / jnp.sqrt(var + 1e-4) * scale + bias, mu, var

  y, mu, var = layers.masked_batch_norm(z, mask, scale, bias, 1e-4)
  y0, mu0, var0 = plain(z, scale, bias)
  np.testing.assert_allclose(y, y0, atol=1e-5)
  np.testing.assert_allclose(mu, mu0, atol=1e-6)
  np.testing.assert_allclose(var, var0, atol=1e-6)
  f = lambda *a: jnp.sum(layers.masked_batch_norm(a[0], mask, a[1], a[2], 1e-4)[0] * g)
  f0 = lambda *a: jnp.sum(plain(*a)[0] * g)
  for got, want in zip(jax.grad(f, (0, 1, 2))(z, scale, bias), jax.grad(f0, (0, 1, 2))(z, scale, bias)):
    np.testing.assert_allclose(got, want, atol=1e-5)

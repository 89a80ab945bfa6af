"""Input pipelines: determinism across processes and resumes, padding, real and generated folders, errors,
and local batches -> global device arrays (`start_global`)."""
import os

import numpy as np
import pytest
from PIL import Image

from fcdd_jax import input_pipeline
from fcdd_jax.data import anomalies
from fcdd_jax.data import custom
from fcdd_jax.data import cutpaste
from fcdd_jax.data import one_vs_rest
from fcdd_jax.data import source
from fcdd_jax.data import transforms
from tests import support
from tests import testdata

SHARED = testdata.SHARED
FMNIST_DEBIAN = testdata.FMNIST_DEBIAN
# Compatibility names for tests/experiments_test.py (not a data test) until it imports tests.testdata.
_write_idx = testdata.write_idx
_write_mvtec_tree = testdata.write_mvtec_tree


def test_global_stream_is_independent_of_process_count_and_resumable(make_config):
  cfg = make_config(batch_size=16)
  p1 = input_pipeline.create(cfg)
  it = p1.train_batches(0)
  batches = [next(it) for _ in range(6)]  # crosses an epoch boundary (4 steps/epoch)
  for pc in (2, 4):
    for step in (0, 5):
      parts = [next(input_pipeline.create(cfg, pi, pc).train_batches(step)) for pi in range(pc)]
      for k in batches[step]:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), batches[step][k])
  resumed = next(input_pipeline.create(cfg).train_batches(3))
  for k in resumed:
    np.testing.assert_array_equal(resumed[k], batches[3][k])
  # online supervision: anomalies are present, with maps covering changed pixels
  labels = np.concatenate([b['label'] for b in batches])
  assert 0.25 < labels.mean() < 0.75
  assert all(b['gtmap'][b['label'] == 0].max() == 0 for b in batches)
  assert all(b['gtmap'][b['label'] == 1].min() == 1 for b in batches)  # malformed_normal: all-ones maps
  assert batches[0]['image'].dtype == np.float32 and batches[0]['image'].shape == (16, 32, 32, 3)


def test_exact_half_option(make_config):
  b = next(input_pipeline.create(make_config(batch_size=16, **{'data.exact_half': True})).train_batches(0))
  assert b['label'].sum() == 8


def test_eval_batches_pad_and_mark_valid(make_config):
  cfg = make_config(batch_size=16, **{'data.demo_num_test': 37})
  p = input_pipeline.create(cfg)
  bs = list(p.eval_batches('test', batch_size=16))
  assert len(bs) == 3
  valid = np.concatenate([b['valid'] for b in bs])
  index = np.concatenate([b['index'] for b in bs])
  assert valid.sum() == 37 and (index[valid > 0] == np.arange(37)).all() and (index[valid == 0] == -1).all()
  halves = [list(input_pipeline.create(cfg, i, 2).eval_batches('test', batch_size=16)) for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([np.concatenate([h[b]['index'] for h in halves]) for b in range(3)]),
                                index)


def test_custom_mvtec_layout_with_masks_and_joint_augmentation(tmp_path, make_config):
  root = str(tmp_path / 'parts')
  testdata.write_mvtec_tree(root)
  cfg = make_config(batch_size=4, **{'data.name': 'custom', 'data.root': root, 'model.name': 'FCDD_CNN224_VGG_NOPT',
                                     'data.cache_dir': str(tmp_path / 'cache')})
  p = input_pipeline.create(cfg)
  assert custom.detect_layout(root) == 'mvtec'
  assert p.info.image_shape == (224, 224, 3) and p.info.test_gtmaps and p.info.num_test == 6
  ev = next(p.eval_batches('test', batch_size=8))
  assert ev['gtmap'].shape == (8, 224, 224)
  # the defect square is where the image is bright, at net input size
  lab = ev['label'][:6]
  assert lab.tolist() == [1, 1, 1, 0, 0, 0]  # sorted folders: crack before good
  for i in range(3):
    bright = ev['image'][i].mean(-1) > ev['image'][i].mean() + 2 * ev['image'][i].std()
    assert (ev['gtmap'][i][bright] == 1).mean() > 0.95
  masks = p.test_masks_original()
  assert masks[0].shape == (40, 40) and masks[0].sum() == 100
  # joint train transform keeps mask and image aligned
  rng = np.random.default_rng(0)
  raw = p.test_images[0]
  m = (p.test_masks[0] > 0).astype(np.float32)
  for _ in range(6):
    x, mm = p.transform.train(raw, m, rng)
    bright = x.mean(-1) > x.mean() + 2 * x.std()
    assert (mm[bright] == 1).mean() > 0.95


def test_custom_layout_errors(tmp_path, make_config):
  root = str(tmp_path / 'p')
  testdata.write_mvtec_tree(root)
  base = dict(batch_size=4, **{'data.name': 'custom', 'data.root': root, 'data.cache_dir': str(tmp_path / 'c')})
  with pytest.raises(ValueError, match='normal_class=3 is out of range'):
    input_pipeline.create(make_config(**base, **{'data.normal_class': 3}))
  with pytest.raises(FileNotFoundError, match='is not a directory'):
    input_pipeline.create(make_config(**{**base, 'data.root': str(tmp_path / 'nope')}))
  # a corrupt image: error naming the file, or skip on request
  bad = os.path.join(root, 'train', 'good', 'zzz.png')
  with open(bad, 'wb') as f:
    f.write(b'not a png')
  with pytest.raises(ValueError, match='cannot read image .*zzz.png'):
    input_pipeline.create(make_config(**base))
  p = input_pipeline.create(make_config(**base, **{'data.on_bad_image': 'skip'}))
  assert len(p.train_images) == 6
  os.remove(bad)
  # a mask of the wrong size
  mpath = os.path.join(root, 'ground_truth', 'crack', '000_mask.png')
  Image.fromarray(np.zeros((20, 20), np.uint8)).save(mpath)
  with pytest.raises(ValueError, match='000_mask.png is 20x20 but its image .* is 40x40'):
    input_pipeline.create(make_config(**base))
  os.remove(mpath)
  with pytest.raises(ValueError, match='missing mask .*000_mask.png'):
    input_pipeline.create(make_config(**base))
  Image.fromarray(np.zeros((40, 40), np.uint8)).save(mpath)
  Image.fromarray(np.zeros((40, 40), np.uint8)).save(os.path.join(root, 'ground_truth', 'crack', '999_mask.png'))
  with pytest.raises(ValueError, match='999_mask.png has no test image'):
    input_pipeline.create(make_config(**base))
  os.makedirs(os.path.join(root, 'test', 'empty'))
  with pytest.raises(ValueError, match='empty test folder'):
    input_pipeline.create(make_config(**base))
  with pytest.raises(ValueError, match="data.name='nope' is unknown"):
    input_pipeline.create(make_config(**{'data.name': 'nope'}))
  for seed in (-1, 2**32):
    with pytest.raises(ValueError, match=f'config.seed={seed} is out of range'):
      input_pipeline.create(make_config(seed=seed))


def test_reference_one_vs_rest_layout_gray_and_rgba(tmp_path, make_config):
  root = tmp_path / 'ovr'
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for c in ('cats', 'dogs'):
      os.makedirs(root / split / c)
      for i in range(3):
        mode = ['L', 'RGB', 'RGBA'][i]
        a = rng.integers(0, 255, (30 + i, 50, {'L': 1, 'RGB': 3, 'RGBA': 4}[mode]), dtype=np.uint8)
        Image.fromarray(a[..., 0] if mode == 'L' else a, mode).save(root / split / c / f'{i}.png')
  cfg = make_config(batch_size=2, **{'data.name': 'custom', 'data.root': str(root), 'data.normal_class': 1,
                                     'data.cache_dir': str(tmp_path / 'c')})
  p = input_pipeline.create(cfg)
  assert p.info.class_names == ('cats', 'dogs') and not p.info.test_gtmaps
  assert p.train_images.shape == (3, 248, 248, 3)
  assert p.test_labels.tolist() == [1, 1, 1, 0, 0, 0]


def test_fmnist_from_generated_idx_files(tmp_path, make_config):
  rng = np.random.default_rng(0)
  tr_y = np.repeat(np.arange(10), 4)
  te_y = np.repeat(np.arange(10), 2)
  testdata.write_idx(tmp_path / 'train-images-idx3-ubyte.gz', rng.integers(0, 255, (40, 28, 28)))
  testdata.write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', tr_y)
  testdata.write_idx(tmp_path / 't10k-images-idx3-ubyte.gz', rng.integers(0, 255, (20, 28, 28)))
  testdata.write_idx(tmp_path / 't10k-labels-idx1-ubyte.gz', te_y)
  cfg = make_config(batch_size=2, **{'data.name': 'fmnist', 'data.root': str(tmp_path), 'data.normal_class': 3,
                                     'data.preproc': 'lcnaug1', 'data.supervise_mode': 'noise',
                                     'data.noise_mode': 'gaussian'})
  p = input_pipeline.create(cfg)
  assert p.info.image_shape == (28, 28, 1) and p.info.num_train == 4
  assert p.test_labels.sum() == 18  # one-vs-rest: 2 nominal, 18 anomalous
  b = next(p.train_batches(0))
  assert b['image'].shape == (2, 28, 28, 1) and 'gtmap' not in b
  # LCN + min-max of class 3 (spec §5.4): test images land in a bounded range around [0, 1]
  x = next(p.eval_batches('test', 20))['image']
  mn, mx = -1.9533653259277344, 18.65673065185547
  xi = p.test_images[0, ..., 0].astype(np.float64) / 255
  xi = xi - xi.mean()
  xi = xi / np.abs(xi).mean()
  np.testing.assert_allclose(x[0, ..., 0], (xi - mn) / (mx - mn), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='normal_class=10 is out of range'):
    input_pipeline.create(make_config(**{'data.name': 'fmnist', 'data.root': str(tmp_path), 'data.normal_class': 10}))


@pytest.mark.skipif(not os.path.isdir(FMNIST_DEBIAN), reason='Debian package dataset-fashion-mnist not installed')
def test_fmnist_real_debian_files_with_cifar_like_oe(tmp_path, make_config):
  oe = tmp_path / 'oe'
  os.makedirs(oe)
  for i in range(5):
    Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(oe / f'{i}.png')
  cfg = make_config(batch_size=8, **{'data.name': 'fmnist', 'data.root': '', 'data.normal_class': 0,
                                     'data.preproc': 'lcnaug1', 'data.supervise_mode': 'noise', 'data.noise_mode': 'folder',
                                     'data.oe_root': str(oe), 'data.cache_dir': str(tmp_path / 'c')})
  p = input_pipeline.create(cfg)
  assert p.info.num_train == 6000 and p.info.num_test == 10000 and p.test_labels.sum() == 9000
  assert p.oe_images.shape == (5, 28, 28, 1)
  b = next(p.train_batches(0))
  assert b['image'].shape == (8, 28, 28, 1) and set(b['label'].tolist()) <= {0, 1}


def test_cifar10_real_jpeg_folders(cifar_small, tmp_path, make_config):
  cfg = make_config(batch_size=4, **{'data.name': 'cifar10', 'data.root': cifar_small, 'data.normal_class': 7,
                                     'data.preproc': 'aug1', 'data.supervise_mode': 'noise', 'data.noise_mode': 'folder',
                                     'data.oe_root': os.path.join(cifar_small, 'train', 'dog'),
                                     'data.cache_dir': str(tmp_path / 'c'), 'model.name': 'FCDD_CNN32_LW3K'})
  p = input_pipeline.create(cfg)
  assert p.info.class_names[7] == 'horse' and p.info.num_train == 12 and p.info.num_test == 50
  assert p.test_labels.sum() == 45
  x = next(p.eval_batches('test', 50))['image']
  assert x.shape == (50, 32, 32, 3) and abs(float(x.mean())) < 1.5


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, 'mvtec_bottle_256', 'bottle')),
                    reason='shared MVTec bottle data not available')
def test_real_mvtec_bottle_without_masks(tmp_path, capsys, make_config):
  cfg = make_config(batch_size=4, **{'data.name': 'custom', 'data.root': os.path.join(SHARED, 'mvtec_bottle_256', 'bottle'),
                                     'data.cache_dir': str(tmp_path / 'c')})
  p = input_pipeline.create(cfg)
  assert 'pixel_auc is null' in capsys.readouterr().out
  assert p.info.num_train == 209 and p.info.num_test == 83 and not p.info.test_gtmaps
  assert p.test_labels.sum() == 63
  assert p.test_masks_original() is None


def test_confetti_statistics_and_malformed_normal():
  rng = np.random.default_rng(0)
  counts = [anomalies._centres(rng, 240, 240, 0.000018, at_least_one=False)[0].size for _ in range(2000)]  # pylint: disable=protected-access
  assert np.mean(counts) == pytest.approx(240 * 240 * 0.000018, rel=0.1)  # ~1.04 coloured blobs
  x = np.full((240, 240, 3), 128, np.uint8)
  for s in range(5):
    n = anomalies.confetti(np.random.default_rng(s), x.shape)
    assert n.max() <= 0 and n.min() < -50        # darkening only, at least one blob
  bright = np.full((64, 64, 3), 255, np.uint8)   # darkening does nothing? no: it darkens white
  dark = np.zeros((64, 64, 3), np.uint8)         # darkening black does nothing -> brighten (spec §6.4)
  a, gt = anomalies.make_anomaly('malformed_normal', 'confetti', np.random.default_rng(1), dark, size_scale=0.3)
  assert a.max() > 0 and gt.min() == 1
  a, gt = anomalies.make_anomaly('malformed_normal_gt', 'confetti', np.random.default_rng(1), bright, size_scale=0.3)
  np.testing.assert_array_equal(gt, np.any(a != bright, -1))


@pytest.mark.parametrize('name,shape', [('fmnist', (28, 28, 1)), ('cifar10', (32, 32, 3))])
def test_tfds_path_with_mock_data(name, shape, monkeypatch, tmp_path, make_config):
  """Users with internet get the datasets through tfds (mocked here: a real tfds.load cannot download)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(one_vs_rest, 'FMNIST_DEFAULT_ROOT', str(tmp_path / 'absent'))
  cfg = make_config(batch_size=4, **{'data.name': name, 'data.root': '', 'data.supervise_mode': 'noise',
                                     'data.noise_mode': 'uniform', 'data.preproc': 'lcn', 'data.normal_class': 1})
  with tfds.testing.mock_data(num_examples=40):
    p = input_pipeline.create(cfg)
  assert p.info.image_shape == shape and p.info.num_test == 40
  assert p.train_images.shape[1:] == shape and p.train_images.dtype == np.uint8
  assert set(np.unique(p.test_labels)) <= {0, 1}
  x = next(p.eval_batches('test', 8))['image']
  assert x.shape == (8,) + shape and np.isfinite(x).all()


def test_color_jitter_semantics():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
  np.testing.assert_array_equal(transforms.color_jitter(img, 0, 0, 0, 0, rng), img)
  # brightness only: img * f with f in [0.5, 1.5], rounded and clipped
  r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
  out = transforms.color_jitter(img, 0.5, 0, 0, 0, r1)
  f = r2.uniform(0.5, 1.5)
  np.testing.assert_array_equal(out, np.clip(np.rint(img.astype(np.float64) * f), 0, 255).astype(np.uint8))
  # saturation: blend with the ITU-R 601-2 luma image by factor f
  out = transforms.color_jitter(img, 0, 0, 1.0, 0, np.random.default_rng(1))
  f = np.random.default_rng(1).uniform(0.0, 2.0)
  x = img.astype(np.float64)
  luma = (x @ np.array([0.299, 0.587, 0.114]))[..., None]
  np.testing.assert_allclose(out, np.clip(np.rint(luma * (1 - f) + x * f), 0, 255), atol=1)
  # hue shift keeps gray pixels gray
  g = np.full((4, 4, 3), 100, np.uint8)
  np.testing.assert_array_equal(transforms.color_jitter(g, 0, 0, 0, 0.5, rng), g)


def test_mvtec_through_the_tfds_builder_equals_the_directory_reader(tmp_path, make_config):
  root = tmp_path / 'mvtec'
  testdata.write_mvtec_tree(str(root / 'bottle'), size=40, n_train=3)
  base = dict(batch_size=2, **{'data.name': 'mvtec', 'data.root': str(root), 'data.cache_dir': str(tmp_path / 'c'),
                               'model.name': 'FCDD_CNN224_VGG_NOPT'})
  direct = input_pipeline.create(make_config(**base))
  via_tfds = input_pipeline.create(make_config(**base, **{'data.tfds_data_dir': str(tmp_path / 'tfds')}))
  np.testing.assert_array_equal(direct.train_images, via_tfds.train_images)
  np.testing.assert_array_equal(direct.test_images, via_tfds.test_images)
  np.testing.assert_array_equal(direct.test_labels, via_tfds.test_labels)
  np.testing.assert_array_equal(direct.test_masks, via_tfds.test_masks)
  for a, b in zip(direct.test_masks_original(), via_tfds.test_masks_original()):
    np.testing.assert_array_equal(a, b)
  assert direct.train_images.shape == (3, 240, 240, 3) and direct.test_masks_original()[0].shape == (40, 40)


def test_reference_layout_with_test_maps(tmp_path, make_config):
  root = tmp_path / 'ref'
  rng = np.random.default_rng(0)
  for sub in ('normal', 'anomalous'):
    os.makedirs(root / 'train' / 'parts' / 'normal', exist_ok=True)
    os.makedirs(root / 'test' / 'parts' / sub)
    os.makedirs(root / 'test_maps' / 'parts' / sub)
  for i in range(2):
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(root / 'train' / 'parts' / 'normal' / f'{i}.png')
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(root / 'test' / 'parts' / 'normal' / f'{i}.png')
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(root / 'test' / 'parts' / 'anomalous' / f'{i}.png')
  m = np.zeros((30, 30), np.uint8)
  m[5:10, 5:10] = 255
  Image.fromarray(m).save(root / 'test_maps' / 'parts' / 'anomalous' / '0.png')   # 1.png: missing -> all ones
  p = input_pipeline.create(make_config(batch_size=2, **{'data.name': 'custom', 'data.root': str(root),
                                                         'data.cache_dir': str(tmp_path / 'c')}))
  assert p.info.test_gtmaps
  masks = p.test_masks_original()
  assert [int(x.sum()) for x in masks] == [0, 0, 25, 900]  # test/normal first, then test/anomalous


def test_start_global_gives_the_global_batches_sharded_over_the_devices(make_config):
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  n = jax.device_count()
  assert n == 2                                                 # conftest: 2 simulated CPU devices
  mesh = jax.make_mesh((n,), ('data',))
  sharding = NamedSharding(mesh, PartitionSpec('data'))
  p = input_pipeline.create(make_config(batch_size=16, **{'data.demo_num_train': 40}))   # 3 steps/epoch, padded
  it = input_pipeline.start_global(p, sharding, start_step=2, prefetch=2)
  for step in (2, 3, 4):
    got = next(it)
    want = p.global_train_batch(step)
    assert set(got) == set(want) and ('valid' in got) == (step == 2)   # the epoch's last batch is padded
    for k, v in want.items():
      assert got[k].sharding == sharding and got[k].shape == v.shape
      np.testing.assert_array_equal(np.asarray(got[k]), v)
      assert {s.data.shape[0] for s in got[k].addressable_shards} == {16 // n}
  # any finite iterable of local batches (evaluation): all of them, in order, then the end
  evals = list(p.eval_batches('test', batch_size=16))
  out = list(input_pipeline.prefetch_to_device(iter(evals), sharding, size=2))
  assert len(out) == len(evals)
  for g, e in zip(out, evals):
    np.testing.assert_array_equal(np.asarray(g['index']), e['index'])


def test_preview_shows_each_label_with_its_maps(make_config, tmp_path):
  p = input_pipeline.create(make_config(batch_size=16))                    # demo 32², malformed_normal, maps
  b = p.global_train_batch(0)
  n = [int((b['label'] == lab).sum()) for lab in (0, 1)]
  assert min(n) > 0
  p.write_preview(str(tmp_path / 'ds_preview.png'))
  img = np.asarray(Image.open(tmp_path / 'ds_preview.png'))
  assert img.shape == (256, 2 * 32 * max(n), 3)                            # 4 rows of 32 px, scaled x2
  small = img[::2, ::2]
  first = b['image'][b['label'] == 0][0]
  want = ((first - first.min()) / (first.max() - first.min()) * 255).astype(np.uint8)
  np.testing.assert_array_equal(small[:32, :32], want)                     # nominal row, min-max per image
  np.testing.assert_array_equal(small[32:64, :32 * n[0]], 0)               # nominal maps are empty
  assert (small[96:128, :32 * n[1]] == 255).all()                          # malformed_normal: all-ones maps


# ----------------------------------------------------------------------------------------------------
# CutPaste through the pipeline and polluted training sets (issue 16)

def _with(cfg, **fields):
  """cfg with data fields set even where the config file has no such field yet (data.pollution)."""
  with cfg.unlocked():
    for k, v in fields.items():
      setattr(cfg.data, k, v)
  return cfg


def _position_source(train_geom, raw, inp):
  """A Source whose images encode each pixel's (row, col) in R and G (4 levels per pixel, B = 200), with a
  crop + flip augmentation, so the geometry of an augmented (and pasted) image can be read off its values."""
  from fcdd_jax.data import source  # pylint: disable=g-import-not-at-top
  yy, xx = np.mgrid[0:raw, 0:raw]
  img = np.stack([yy * 4, xx * 4, np.full_like(yy, 200)], -1).astype(np.uint8)
  t = transforms.Transform(mean=np.zeros(3, np.float32), std=np.ones(3, np.float32), input_size=(inp, inp),
                           raw_size=(raw, raw), channels=3, train_geom=train_geom, crop_pad=4, hflip=True,
                           noise_std=0.0)
  imgs = np.repeat(img[None], 64, 0)
  return source.Source(name='demo', class_names=('x',), normal_class=0, transform=t, train_images=imgs,
                       test_images=imgs[:2], test_labels=np.zeros(2, np.int32))


@pytest.mark.parametrize('train_geom,raw', [('crop_pad', 48), ('crop', 60)])
def test_cutpaste_gt_maps_are_the_pasted_region_after_crops_and_flips(train_geom, raw, make_config):
  cfg = make_config('demo', batch_size=32, **{'data.supervise_mode': 'malformed_normal_gt',
                                              'data.noise_mode': 'cutpaste'})
  p = input_pipeline.Pipeline(cfg, _position_source(train_geom, raw, 48))
  assert p.info.train_gtmaps
  b = p.global_train_batch(3)
  assert 'gtmap' in b and (b['label'] == 1).sum() >= 8
  flips = 0
  for x, y, g in zip(b['image'], b['label'], b['gtmap']):
    v = np.rint(x * 255).astype(int)
    real = v[..., 2] > 0                        # not the zero padding of crop_pad
    rows, cols = v[..., 0] // 4, v[..., 1] // 4
    ii, jj = np.mgrid[0:48, 0:48]
    # the crop offset and the flip are those that most pixels agree with (the nominal part)
    dy = np.bincount((rows - ii)[real] + 100).argmax() - 100
    unflipped = ((cols - jj)[real] == np.median((cols - jj)[real])).mean()
    flipped = unflipped < 0.5
    flips += flipped
    want_c = (np.bincount((cols + jj)[real]).argmax() - jj) if flipped else (jj + np.median((cols - jj)[real]))
    moved = real & ((rows != ii + dy) | (cols != want_c) | (v[..., 2] != 200))
    if y == 0:
      assert not g.any() and not moved.any()
      continue
    region = g > 0
    inter, union = (region & moved).sum(), (region | moved).sum()
    assert region.sum() > 0 and inter / union > 0.9, (inter, union)
  assert 0 < flips < 32   # both orientations were exercised


def test_generated_confetti_maps_only_with_generated_maps(make_config):
  """Without data.generated_maps a dataset without masks keeps the reference's label loss for confetti
  (spec §3.2: its loader drops the generated map); the option needs malformed_normal_gt."""
  cfg = make_config('demo', batch_size=32, **{'data.supervise_mode': 'malformed_normal_gt',
                                              'data.noise_mode': 'confetti'})
  p = input_pipeline.Pipeline(cfg, _position_source('crop', 60, 48))
  assert not p.info.train_gtmaps and 'gtmap' not in p.global_train_batch(0)
  # with it: the map of each anomaly is the set of pixels the confetti changed (identity geometry here)
  img = _position_source('crop', 48, 48).train_images[0]
  cfg.data.generated_maps = True
  for changed, y, g in support.changed_pixels_and_maps(cfg, img):
    np.testing.assert_array_equal(g > 0, changed)
    assert changed.any() == bool(y)
  from fcdd_jax.pipeline import config_checks  # pylint: disable=g-import-not-at-top
  with pytest.raises(config_checks.ConfigError, match='generated_maps=True .* needs '
                     "config.data.supervise_mode=malformed_normal_gt, not 'malformed_normal'"):
    config_checks.check_config(make_config('demo', **{'data.generated_maps': True}))


def test_cutpaste_names_are_accepted_and_other_supervisions_keep_their_maps(make_config):
  for mode in cutpaste.CUTPASTE_MODES:
    cfg = make_config(batch_size=8, **{'data.supervise_mode': 'malformed_normal', 'data.noise_mode': mode})
    b = input_pipeline.create(cfg).global_train_batch(0)
    # the demo trains with maps for malformed_normal: anomalies carry all-ones maps (not the region)
    assert all(g.all() for g, y in zip(b['gtmap'], b['label']) if y == 1)
  with pytest.raises(ValueError, match="noise_mode='cutpast' is not available"):
    input_pipeline.create(make_config(**{'data.noise_mode': 'cutpast'}))


def test_preview_outlines_partial_anomaly_maps(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from fcdd_jax.data import preview  # pylint: disable=g-import-not-at-top
  x = np.full((2, 32, 32, 3), 0.5, np.float32)
  x[:, 0, 0] = 0.0   # min-max scaling: background 127
  g = np.zeros((2, 32, 32), np.float32)
  g[1, 10:20, 12:16] = 1
  preview.write_preview({'image': x, 'label': np.array([0, 1]), 'gtmap': g}, str(tmp_path / 'p.png'))
  im = np.asarray(Image.open(tmp_path / 'p.png'))
  s = im.shape[0] // 96                    # rows: nominal, its maps, anomalous, its maps; 32 px each, scaled
  anomalous = im[64 * s:96 * s:s, ::s][:, :32]
  red = (anomalous == (255, 0, 0)).all(-1)
  ref = np.zeros((32, 32), bool)
  ref[9:21, 11:17] = True
  ref[10:20, 12:16] = False                # the ring just outside the region
  np.testing.assert_array_equal(red, ref)
  assert not (im[:32 * s:s, ::s][:, :32] == (255, 0, 0)).all(-1).any()   # nominal: no outline


def test_demo_pollution_mixes_in_generated_defects_unlabelled(make_config):
  base = dict(batch_size=8, **{'data.demo_num_train': 90})
  clean = input_pipeline.create(make_config(**base))
  p = input_pipeline.create(_with(make_config(**base), pollution=0.1))
  assert len(p.train_images) == 100 and p.train_is_anomaly.sum() == 10   # round(0.1 * 90 / 0.9)
  assert p.pollution['num_anomalies'] == 10 and p.pollution['ratio'] == 0.1
  clean_set = {a.tobytes() for a in clean.train_images}
  in_clean = np.array([a.tobytes() in clean_set for a in p.train_images])
  np.testing.assert_array_equal(~in_clean, p.train_is_anomaly)
  assert len(clean_set & {a.tobytes() for a in p.train_images}) == 90
  # unlabelled: the anomalies are nominal training rows (no fixed labels)
  assert p.train_labels is None
  again = input_pipeline.create(_with(make_config(**base), pollution=0.1))
  np.testing.assert_array_equal(again.train_images, p.train_images)


def test_mvtec_layout_pollution_moves_test_anomalies_into_training(tmp_path, make_config):
  root = str(tmp_path / 'parts')
  testdata.write_mvtec_tree(root, n_train=6)
  base = dict(batch_size=4, **{'data.name': 'custom', 'data.root': root, 'model.name': 'FCDD_CNN224_VGG_NOPT',
                               'data.cache_dir': str(tmp_path / 'cache'), 'data.preproc': 'aug1'})
  clean = input_pipeline.create(make_config(**base))
  p = input_pipeline.create(_with(make_config(**base), pollution=0.2))
  k = 2                                                # round(0.2 * 6 / 0.8) = 2 of the 3 crack images
  assert p.train_is_anomaly.sum() == k and len(p.train_images) == 6 + k
  assert p.info.num_test == 6 - k and p.test_labels.sum() == 1 and len(p.test_masks_original()) == 6 - k
  assert p.pollution['test_removed'] == k
  # the removed test images are in training (the 224 copies, as the test set stores them) and not in the test
  moved = {a.tobytes() for a in clean.test_images} - {a.tobytes() for a in p.test_images}
  assert len(moved) == k
  assert {a.tobytes() for a in p.train_images_input[p.train_is_anomaly]} == moved
  assert p.train_images.shape[1:] == (248, 248, 3) and p.train_original_sizes.shape == (6 + k, 2)


def test_one_vs_rest_pollution_from_the_other_classes(tmp_path, make_config):
  testdata.write_fmnist_files(tmp_path, n_per_class=8)
  cfg = make_config(batch_size=2, **{'data.name': 'fmnist', 'data.root': str(tmp_path), 'data.normal_class': 3,
                                     'data.preproc': 'lcnaug1', 'data.supervise_mode': 'noise',
                                     'data.noise_mode': 'gaussian'})
  p = input_pipeline.create(_with(cfg, pollution=0.5))
  from fcdd_jax.data import image_io  # pylint: disable=g-import-not-at-top
  tr = image_io.read_idx(str(tmp_path / 'train-images-idx3-ubyte.gz'))
  lab = image_io.read_idx(str(tmp_path / 'train-labels-idx1-ubyte.gz'))
  own = {a.tobytes() for a in tr[lab == 3]}
  others = {a.tobytes() for a in tr[lab != 3]}
  rows = [a[..., 0].tobytes() for a in p.train_images]
  assert len(rows) == 16 and p.train_is_anomaly.sum() == 8
  assert [r in others for r in rows] == p.train_is_anomaly.tolist()
  assert {r for r in rows if r in own} == own


def test_pollution_errors(make_config):
  with pytest.raises(ValueError, match='data.pollution=1.0 is out of range'):
    input_pipeline.create(_with(make_config(), pollution=1.0))
  with pytest.raises(ValueError, match='pollution=0.1 is not available for imagenet'):
    imagenet = {'data.name': 'imagenet', 'data.supervise_mode': 'unsupervised', 'data.preproc': 'aug1'}
    input_pipeline.create(_with(make_config(**imagenet), pollution=0.1))
  with pytest.raises(ValueError, match='pollution=0.1 needs an unlabelled'):
    input_pipeline.create(_with(make_config(**{'data.supervise_mode': 'other'}), pollution=0.1))


def test_training_subsets_share_one_source(make_config):
  cfg = _with(make_config(batch_size=8), pollution=0.1)
  src = input_pipeline.load_source(cfg)
  full = input_pipeline.Pipeline(cfg, src)
  idx = np.array([3, 5, 8, 13, 21, 34])
  sub = input_pipeline.Pipeline(cfg, src, train_indices=idx)
  np.testing.assert_array_equal(sub.train_images, full.train_images[idx])
  np.testing.assert_array_equal(sub.train_is_anomaly, full.train_is_anomaly[idx])
  assert sub.info.num_train == 6 and sub.info.steps_per_epoch == 1
  with pytest.raises(ValueError, match='training indices'):
    input_pipeline.Pipeline(cfg, src, train_indices=[len(full.train_images)])


@pytest.mark.parametrize('dataset', ['demo', 'mvtec_layout_256'])
def test_cutpaste_gt_end_to_end_trains_with_the_gt_map_loss_and_writes_the_preview(dataset, tmp_path,
                                                                                   make_config):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from fcdd_jax.pipeline import run as run_lib  # pylint: disable=g-import-not-at-top
  from fcdd_jax.pipeline import train  # pylint: disable=g-import-not-at-top
  kw = {'data.supervise_mode': 'malformed_normal_gt', 'data.noise_mode': 'cutpaste_mixed', 'num_train_steps': 2,
        'eval.num_figure_samples': 2}
  if dataset != 'demo':
    root = str(tmp_path / 'parts')
    testdata.write_mvtec_tree(root, size=256, n_train=8)
    kw.update({'data.name': 'custom', 'data.root': root, 'data.preproc': 'aug1', 'batch_size': 8,
               'model.name': 'FCDD_CNN224', 'data.cache_dir': str(tmp_path / 'cache')})
  cfg = make_config(**kw)
  p = input_pipeline.create(cfg)
  assert run_lib.build_run(cfg, p.info, p.info.steps_per_epoch).step_config.gtmaps   # the GT-map loss (§3.2)
  b = p.global_train_batch(0)
  partial = [0 < g.mean() < 0.5 for g, y in zip(b['gtmap'], b['label']) if y == 1]
  assert partial and all(partial)          # every anomaly's map is its pasted region, not the whole image
  wd = str(tmp_path / 'run')
  res = train.train_and_evaluate(cfg, wd)
  assert res['image_auc'] is not None and res['steps'] == 2
  im = np.asarray(Image.open(os.path.join(wd, 'ds_preview.png')))
  assert (im == (255, 0, 0)).all(-1).any()   # pasted regions outlined

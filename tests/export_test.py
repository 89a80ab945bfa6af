"""Export to SavedModel and StableHLO: reloaded without fcdd_jax, the artefacts reproduce fcdd_jax.serving.predictor."""
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from fcdd_jax.configs import test as test_config
from fcdd_jax.serving import exporter as export
from fcdd_jax import export as export_cmd
from fcdd_jax.serving import export_preprocess
from fcdd_jax.serving import predictor as predict
from fcdd_jax.pipeline import train
from fcdd_jax.data import transforms
from tests import paths

# Runs in a fresh interpreter that must never import fcdd_jax: plain TensorFlow for the SavedModel,
# plain jax.export for the StableHLO artefact.
_LOADER = r'''
import os, sys
import numpy as np
import tensorflow as tf
tf.config.set_visible_devices([], 'GPU')
from jax import export as jax_export
out_dir, inputs, result = sys.argv[1:4]
x = dict(np.load(inputs))
model = tf.saved_model.load(os.path.join(out_dir, '1'))
serve = model.signatures['serving_default']
spec = serve.structured_input_signature[1]['images']
res = {'spec': np.asarray([str(spec.dtype.name), str(spec.shape)])}
with open(os.path.join(out_dir, 'model.stablehlo'), 'rb') as f:
  exported = jax_export.deserialize(bytearray(f.read()))
for name, images in x.items():
  for k, v in serve(images=tf.constant(images)).items():
    res[f'tf/{name}/{k}'] = v.numpy()
  for k, v in exported.call(images).items():
    res[f'hlo/{name}/{k}'] = np.asarray(v)
res['fcdd_jax_imported'] = np.asarray(any(m.split('.')[0] == 'fcdd_jax' for m in sys.modules))
np.savez(result, **res)
'''


def _load_and_run(out, tmp_path):
  """The export `out` loaded and run on tmp_path/in.npz in a fresh interpreter without fcdd_jax (_LOADER);
  its outputs (res.npz)."""
  proc = subprocess.run([sys.executable, '-c', _LOADER, str(out), str(tmp_path / 'in.npz'), str(tmp_path / 'res.npz')],
                        cwd=str(tmp_path), env=paths.user_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return np.load(tmp_path / 'res.npz')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('run'))
  config = test_config.get_config()
  config.eval.train_heatmaps = False
  config.eval.image_score = 'top5%'   # the exported score pools the heatmap as the run's evaluation did
  train.train_and_evaluate(config, wd)
  return wd


def _pil_resize_float(h, size):
  """Independent reference for the heatmap's way back to the input grid: Pillow's float bilinear resize."""
  return np.asarray(Image.fromarray(h.astype(np.float32), 'F').resize((size[1], size[0]), Image.BILINEAR))


def test_exported_artefacts_reproduce_predict_without_fcdd_jax(run, tmp_path):
  out = tmp_path / 'export'
  assert export_cmd.main(['--workdir', run, '--output', str(out)]) == 0
  assert os.path.exists(out / '1' / 'saved_model.pb') and os.path.exists(out / 'model.stablehlo')
  meta = json.load(open(out / 'metadata.json'))
  thr = json.load(open(os.path.join(run, 'results.json')))['thresholds']
  assert meta['thresholds'] == thr and meta['input']['shape'] == ['N', 'H', 'W', 3]
  assert json.load(open(out / '1' / 'assets.extra' / 'fcdd_metadata.json')) == meta
  rng = np.random.default_rng(0)
  pred = predict.Predictor(run, mode='crop')   # crop mode = the evaluation transform
  train_size = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  taller = rng.integers(0, 256, (3, 50, 40, 3), dtype=np.uint8)     # bilinear resize, vertical pass first
  small = rng.integers(0, 256, (2, 20, 24, 3), dtype=np.uint8)      # upscaled input, heatmap shrinks back
  np.savez(tmp_path / 'in.npz', train_size=train_size, taller=taller, small=small)
  res = _load_and_run(out, tmp_path)
  assert not res['fcdd_jax_imported']
  assert list(res['spec']) == ['uint8', '(None, None, None, 3)']
  for name, images in (('train_size', train_size), ('taller', taller), ('small', small)):
    scores, maps = pred.predict(list(images))
    for fmt in ('tf', 'hlo'):
      s, h, a = (res[f'{fmt}/{name}/{k}'] for k in ('score', 'heatmap', 'anomalous'))
      np.testing.assert_allclose(s, scores, rtol=1e-4)
      np.testing.assert_array_equal(a, s >= thr['image'])
      assert h.shape == images.shape[:3]
      want = np.stack([_pil_resize_float(m, images.shape[1:3]) for m in maps])
      np.testing.assert_allclose(h, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _smooth_images(rng, n, h, w, c):
  """Images with structure at several scales (pure noise hides resampling differences less well)."""
  out = []
  for _ in range(n):
    a = rng.integers(0, 256, (h // 3 + 1, w // 3 + 1, 3), dtype=np.uint8)
    im = Image.fromarray(a).resize((w, h), Image.BICUBIC)
    arr = np.asarray(im)
    out.append(np.concatenate([arr, arr[..., :1]], -1)[..., :c] if c != 1 else arr[..., :1])
  return np.stack(out)


@pytest.mark.parametrize('pre,c_in,sizes', [
    # demo-like: bilinear resize to the raw (= input) size, mean/std; gray images into an RGB run;
    # 50x40 and 40x50 take Pillow's two pass orders (vertical first, horizontal first)
    (dict(channels=3, input_size=[32, 32], raw_size=[32, 32], kind='normalize', mean=[.5, .4, .3],
          std=[.1, .2, .3], resize='bilinear', test_center=False), 1, [(50, 40), (40, 50), (17, 33)]),
    # custom folders without masks: shorter side -> 248, centre crop, centre crop 224
    (dict(channels=3, input_size=[224, 224], raw_size=[248, 248], kind='normalize', mean=[.5, .4, .3],
          std=[.1, .2, .3], resize='shorter', test_center=True), 3, [(200, 320), (300, 256)]),
    # MVTec lcnaug1: nearest to 240, nearest 240 -> 224, LCN; RGBA input
    (dict(channels=3, input_size=[224, 224], raw_size=[240, 240], kind='lcn', lcn_min=[-1., -2., -3.],
          lcn_max=[4., 5., 6.], mean=None, std=None, resize='nearest', test_center=False), 4, [(256, 300)]),
    # fmnist lcn: gray run, RGB input (luma)
    (dict(channels=1, input_size=[28, 28], raw_size=[28, 28], kind='lcn', lcn_min=[-1.5], lcn_max=[9.0],
          mean=None, std=None, resize='bilinear', test_center=False), 3, [(28, 28), (64, 30)]),
])
def test_preprocessing_with_symbolic_shapes_equals_the_evaluation_transform(pre, c_in, sizes):
  fn = export_preprocess.make_preprocess(pre, c_in)
  exp = jax.export.export(jax.jit(lambda x: fn(x)[0]))(
      jax.ShapeDtypeStruct(jax.export.symbolic_shape(f'b, h, w, {c_in}'), jnp.uint8))
  transform = transforms.make_test_transform(pre)   # Pillow resizes + NumPy values
  rng = np.random.default_rng(1)
  for h, w in sizes:
    images = _smooth_images(rng, 2, h, w, c_in)
    want = np.stack([transform(im[..., 0] if c_in == 1 else im) for im in images])
    got = np.asarray(exp.call(images))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())


def test_heatmap_goes_back_through_shorter_side_resize_and_centre_crops():
  # custom folders without masks: 300x256 -> shorter side 248 (290x248) -> centre crop 248 -> centre crop 224
  pre = dict(channels=3, input_size=[224, 224], raw_size=[248, 248], kind='normalize', mean=[.5] * 3, std=[.2] * 3,
             resize='shorter', test_center=True)
  h, w = 300, 256
  heat = np.random.default_rng(4).random((1, 224, 224)).astype(np.float32)
  def fn(images, heat):
    _, maps = export_preprocess.make_preprocess(pre, 3)(images)
    return export_preprocess.heatmap_to_input(heat, images.shape[1:3], maps)
  got = np.asarray(jax.jit(fn)(np.zeros((1, h, w, 3), np.uint8), heat))[0]
  # NumPy reference: input pixel centre y + 0.5 -> resized (y + 0.5) * 290/300 -> minus the crop offsets
  # (21 + 12 rows, 0 + 12 columns) -> linear interpolation between net-input pixel centres, 0 outside
  def coords(n, resized, offset):
    return (np.arange(n) + 0.5) * resized / n - offset - 0.5
  cy, cx = coords(h, 290, 33), coords(w, 248, 12)
  rows = np.stack([np.interp(cy, np.arange(224), heat[0][:, j]) for j in range(224)], 1)
  want = np.stack([np.interp(cx, np.arange(224), r) for r in rows])
  inside = ((cy >= -0.5) & (cy <= 223.5))[:, None] & ((cx >= -0.5) & (cx <= 223.5))[None, :]
  want = np.where(inside, want, 0.0)
  assert inside.sum() < h * w   # the crops leave a border
  np.testing.assert_allclose(got, want, atol=5e-5)   # float32 coordinates in jax


def test_pillow_nearest_emulation_on_index_images():
  # Pillow's own index map: a resized image of column indices shows which source pixel each output took
  # (ties such as 256 -> 224 fall on the side where Pillow's accumulated double lands).
  for n_in, n_out in ((256, 224), (640, 240), (56, 28), (7, 240)):
    idx = np.arange(n_in, dtype=np.int32)[None]
    want = np.asarray(Image.fromarray(idx, 'I').resize((n_out, 1), Image.NEAREST))[0]
    with jax.enable_x64(True):
      got = np.asarray(export_preprocess.pil_nearest_index(n_in, n_out))
    np.testing.assert_array_equal(got, want)


def test_fixed_size_export_and_errors(run, tmp_path, capsys):
  out = tmp_path / 'fixed'
  assert export_cmd.main(['--workdir', run, '--output', str(out), '--format', 'stablehlo', '--input_size', '32x32']) == 0
  assert not os.path.exists(out / '1')
  exp = jax.export.deserialize(bytearray((out / 'model.stablehlo').read_bytes()))
  assert str(exp.in_avals[0].shape) == '(b, 32, 32, 3)'
  images = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  scores, maps = predict.Predictor(run, mode='crop').predict(list(images))
  got = exp.call(images)   # the resize to the raw size is skipped at trace time here (static identity)
  np.testing.assert_allclose(got['score'], scores, rtol=1e-4)
  np.testing.assert_allclose(got['heatmap'], np.stack(maps), rtol=1e-4, atol=1e-4 * np.abs(maps).max())
  # refuses to overwrite, names bad flags and unexportable preprocessing in one line
  assert export_cmd.main(['--workdir', run, '--output', str(out), '--format', 'stablehlo']) == 4
  assert 'holds an earlier output (metadata.json); pass --overwrite' in capsys.readouterr().err
  assert export_cmd.main(['--workdir', run, '--output', str(tmp_path / 'x'), '--input_size', '32by32']) == 2
  assert "--input_size='32by32'" in capsys.readouterr().err
  bad = tmp_path / 'badrun'
  shutil.copytree(run, bad)
  p = json.load(open(bad / 'preprocessing.json'))
  json.dump(dict(p, kind='zca'), open(bad / 'preprocessing.json', 'w'))
  assert export_cmd.main(['--workdir', str(bad), '--output', str(tmp_path / 'y')]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1] == "fcdd_jax.export: error: preprocessing.json kind='zca' cannot be exported; exportable: normalize, lcn"
  assert export_cmd.main(['--workdir', str(tmp_path), '--output', str(tmp_path / 'z')]) == 2
  assert 'config.json not found' in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# A patch-trained run (data.patch_size, issue 27): the export scores whole images at their own size

@pytest.fixture(scope='module')
def patch_run(tmp_path_factory):
  from tests.patches_test import patch_config, strips_tree  # pylint: disable=g-import-not-at-top
  from tests.conftest import config_for  # pylint: disable=g-import-not-at-top
  tmp = tmp_path_factory.mktemp('patch')
  c = patch_config(config_for, strips_tree(tmp / 'strips'), tmp, **{'eval.image_score': 'top3%'})
  wd = str(tmp / 'run')
  train.train_and_evaluate(c, wd)   # 16x16 crops of 40x100 ... strips; a pooled score of symbolic size
  return wd


def _native_reference(wd, images):
  """Independent of the exporter and of predict: the run's net over each whole image (value normalisation
  of preprocessing.json), Algorithm 1 as a NumPy transposed convolution at the image's own H x W, and the
  mean of the top 3 % heatmap pixels in NumPy."""
  from fcdd_jax.models import losses  # pylint: disable=g-import-not-at-top
  from fcdd_jax.models import nets as models
  from tests import references
  from fcdd_jax.utils import checkpointing
  p = json.load(open(os.path.join(wd, 'preprocessing.json')))
  state, _ = checkpointing.restore_for_inference(os.path.join(wd, 'checkpoints'))
  variables = {'params': state['params'], 'batch_stats': state.get('batch_stats', {})}
  net = models.create('FCDD_CNN32_S', any_size=True, dtype=jnp.float32)
  r, j, s = models.reception('FCDD_CNN32_S')
  x = (images.astype(np.float32) / 255 - np.asarray(p['mean'], np.float32)) / np.asarray(p['std'], np.float32)
  low = np.asarray(losses.fcdd_heatmaps(net.apply(variables, jnp.asarray(x), train=False)), np.float64)
  heat = references.np_algorithm1_hw(low, r, j, s, images.shape[1], images.shape[2], 1.2)
  flat = np.sort(heat.reshape(len(heat), -1), axis=1)
  k = max(1, round(0.03 * flat.shape[1]))
  return flat[:, -k:].mean(axis=1), heat


def test_patch_trained_run_exports_native_resolution_scoring(patch_run, tmp_path):
  out = tmp_path / 'export'
  assert export_cmd.main(['--workdir', patch_run, '--output', str(out)]) == 0
  meta = json.load(open(out / 'metadata.json'))
  assert meta['input']['shape'] == ['N', 'H', 'W', 3] and 'native resolution' in meta['outputs']['heatmap']
  rng = np.random.default_rng(5)
  # two non-square odd sizes, both larger than the 16x16 training patches (one wider, one taller)
  sizes = {'wide': (37, 91), 'tall': (53, 29)}
  batches = {k: rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8) for k, (h, w) in sizes.items()}
  np.savez(tmp_path / 'in.npz', **batches)
  res = _load_and_run(out, tmp_path)
  assert not res['fcdd_jax_imported']
  thr = json.load(open(os.path.join(patch_run, 'results.json')))['thresholds']['image']
  pred = predict.Predictor(patch_run, tile=8)   # predict follows the run: native size, tiled
  for name, images in batches.items():
    scores, maps = pred.predict(list(images))
    want_scores, want_heat = _native_reference(patch_run, images)
    np.testing.assert_allclose(np.stack(maps), want_heat, rtol=1e-4, atol=1e-5 * np.abs(want_heat).max())
    for fmt in ('tf', 'hlo'):
      s, h, a = (res[f'{fmt}/{name}/{k}'] for k in ('score', 'heatmap', 'anomalous'))
      assert h.shape == images.shape[:3]   # the image's own size
      np.testing.assert_allclose(h, np.stack(maps), rtol=1e-4, atol=1e-5 * np.abs(want_heat).max())  # = predict
      np.testing.assert_allclose(h, want_heat, rtol=1e-4, atol=1e-5 * np.abs(want_heat).max())   # = one net pass
      np.testing.assert_allclose(s, scores, rtol=1e-4)
      np.testing.assert_allclose(s, want_scores, rtol=1e-4)
      np.testing.assert_array_equal(a, s >= thr)


def test_patch_export_would_fail_if_it_resized(patch_run):
  """The exported heatmap of a 40x100 strip is not the run's heatmap of the strip squashed to the 16x16 patch
  size and resized back (what the fixed-size export path does), and the export refuses data.scale != 1."""
  run_ = export.load_run(patch_run)
  fn = export.make_inference_fn(run_)
  img = np.asarray(Image.open(os.path.join(os.path.dirname(patch_run), 'strips', 'test', 'bad', '000.png')))[None]
  native = np.asarray(fn(run_['variables'], jnp.asarray(img))['heatmap'])[0]
  _, want = _native_reference(patch_run, img)
  np.testing.assert_allclose(native, want[0], rtol=1e-4, atol=1e-5 * np.abs(want).max())
  squashed = transforms.resize_u8(img[0], (16, 16))
  _, small = _native_reference(patch_run, squashed[None])
  back = _pil_resize_float(small[0], img.shape[1:3])
  assert np.abs(back - native).max() > 0.05 * np.abs(native).max()   # so the comparison above can tell them apart
  run_['config'].data.scale = 0.5
  with pytest.raises(export_preprocess.ExportError, match=r'^config.json data.scale=0.5: only runs trained at '):
    export.make_inference_fn(run_)

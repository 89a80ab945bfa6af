"""Prediction CLI on a run trained in the test: whole images at their own size, crop mode = evaluation.

References are computed here: preprocessing by hand (PIL resize, mean/std), pseudo-Huber, cell selection
and the Gaussian receptive-field upsampling as a direct transposed convolution (spec §4), NumPy only; the
net itself is the run's restored net (checked against models.create at the nominal size)."""
import csv
import json
import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from fcdd_jax.configs import test as test_config
from fcdd_jax import input_pipeline
from fcdd_jax.models import nets as models
from fcdd_jax.models.cpu import onednn
from fcdd_jax.serving import predictor as predict
from fcdd_jax import predict as predict_cmd
from fcdd_jax.pipeline import run as run_lib
from fcdd_jax.pipeline import train


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('run'))
  train.train_and_evaluate(test_config.get_config(), wd)
  return wd


def read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def np_window(r, std):
  if r % 2:
    n = np.arange(r)
    return np.exp(-0.5 * ((n - (r - 1) / 2) / std) ** 2)
  g = np_window(r - 1, std)
  c = (r - 2) // 2
  return np.insert(g, c + 1, g[c]) / 2


def np_upsample(a, r, j, s, out_h, out_w, std):
  """Spec §4 on an [h,w] map: transposed conv with g (x) g, stride j, output padding per axis, then crop."""
  h, w = a.shape
  G = np.outer(np_window(r, std), np_window(r, std))
  extra = 1 if r % 2 else 2
  fh, fw = (h - 1) * j + r + out_h - (h - 1) * j - extra, (w - 1) * j + r + out_w - (w - 1) * j - extra
  full = np.zeros((max(fh, (h - 1) * j + r), max(fw, (w - 1) * j + r)))
  for y in range(h):
    for x in range(w):
      full[y * j:y * j + r, x * j:x * j + r] += a[y, x] * G
  pad, si = (r - 1) // 2, int(s)
  return full[pad - si:pad - si + out_h, pad - si:pad - si + out_w]


def np_full_mode(pred, img, scaled):
  """Independent full-mode computation for one uint8 RGB image scaled to `scaled` (h, w)."""
  pp, rec, std = pred.preprocessing, pred.reception, pred.config.loss.gauss_std
  sc = np.asarray(Image.fromarray(img).resize((scaled[1], scaled[0]), Image.BILINEAR), np.float64)
  x = (sc / 255 - np.asarray(pp['mean'])) / np.asarray(pp['std'])
  ph, pw = (-scaled[0]) % rec.j, (-scaled[1]) % rec.j
  x = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode='symmetric')
  net = predict.prediction_net(pred.config)
  phi = np.asarray(net.apply(pred.variables, x[None].astype(np.float32)), np.float64)[0, ..., 0]
  a = np.sqrt(phi ** 2 + 1) - 1
  kh = int(np.sum(np.arange(a.shape[0]) * rec.j + rec.s < scaled[0]))
  kw = int(np.sum(np.arange(a.shape[1]) * rec.j + rec.s < scaled[1]))
  cells = a.shape
  a = a[:kh, :kw]
  up = np_upsample(a, rec.r, rec.j, rec.s, scaled[0], scaled[1], std).astype(np.float32)
  heat = np.asarray(Image.fromarray(up).resize((img.shape[1], img.shape[0]), Image.BILINEAR))
  return a.mean(), heat, (kh, kw), cells


def wide_image(h, w, seed=0):
  y, x = np.mgrid[0:h, 0:w]
  img = np.stack([128 + 60 * np.sin(x / 9.0), 128 + 60 * np.cos(y / 7.0), 100 + 0 * x], -1)
  img = img + np.random.default_rng(seed).normal(0, 5, img.shape)
  img[h // 3:h // 3 + h // 5, w // 2:w // 2 + h // 5] = [250, 10, 10]   # a red square: an anomaly
  return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------

def test_640x200_image_end_to_end(run, tmp_path):
  img = wide_image(200, 640)
  Image.fromarray(img).save(tmp_path / 'wide.png')
  out = tmp_path / 'out'
  assert predict_cmd.main(['--workdir', run, '--input', str(tmp_path / 'wide.png'), '--output', str(out)]) == 0
  for kind in ('overlay', 'mask'):
    with Image.open(out / f'wide_{kind}.png') as im:
      assert im.size == (640, 200), kind                      # the file's own width x height
  (row,) = read_csv(out / 'scores.csv')
  score = float(row['score'])
  assert math.isfinite(score) and score > 0
  pred = predict.Predictor(run)
  # demo run: evaluation squashes to 32x32 (no centre crop) -> shorter side 200 -> 32, 640 -> int(32*3.2) = 102
  assert pred.scaled_size(200, 640) == (32, 102)
  want_score, want_heat, keep, cells = np_full_mode(pred, img, (32, 102))
  assert cells == (8, 26)                                     # 32 x 104 padded input, stride 4
  assert score == pytest.approx(want_score, rel=2e-5)         # CSV holds 6 significant digits
  s, maps = pred.predict([img])
  assert s[0] == pytest.approx(want_score, rel=1e-5)
  assert maps[0].shape == (200, 640)
  np.testing.assert_allclose(maps[0], want_heat, rtol=1e-4, atol=1e-4 * want_heat.max())
  assert maps[0].std() > 0
  # the anomaly (red square) is where the heatmap is highest, not near the sides
  peak = np.unravel_index(np.argmax(maps[0]), maps[0].shape)
  assert 40 <= peak[0] <= 140 and 260 <= peak[1] <= 420


def test_padding_cells_are_dropped_and_odd_sizes_work(run):
  pred = predict.Predictor(run, scale=1.0)
  imgs = [wide_image(45, 30, 1), wide_image(45, 30, 2), wide_image(33, 70, 3)]
  s, maps = pred.predict(imgs)
  for img, sc, hm in zip(imgs, s, maps):
    want_score, want_heat, keep, cells = np_full_mode(pred, img, img.shape[:2])
    assert hm.shape == img.shape[:2]
    assert sc == pytest.approx(want_score, rel=1e-5)
    np.testing.assert_allclose(hm, want_heat, rtol=1e-4, atol=1e-4 * want_heat.max())
  # 45 rows -> padded 48 -> 12 cell rows, of which 11 are centred inside (11*4 + 1.5 > 45)
  assert np_full_mode(pred, imgs[0], (45, 30))[2:] == ((11, 8), (12, 8))


def test_crop_mode_equals_evaluation_and_full_mode_at_training_size(run, tmp_path):
  config = test_config.get_config()
  pipe = input_pipeline.create(config)
  pred_crop = predict.Predictor(run, mode='crop')
  # evaluation scores: the run's test transform and the net of run_lib.create_model (as eval_step computes)
  net = run_lib.create_model(config, pipe.info)
  eval_scores = []
  for b in pipe.eval_batches():
    phi = np.asarray(jax.jit(lambda v, x: net.apply(v, x, train=False))(pred_crop.variables, b['image']), np.float64)
    sc = (np.sqrt(phi ** 2 + 1) - 1).mean(axis=(1, 2, 3))
    eval_scores += list(sc[b['valid'] > 0])
  eval_scores = np.asarray(eval_scores)
  images = list(pipe.test_images)
  assert len(images) == len(eval_scores) == config.data.demo_num_test
  inp = tmp_path / 'test'
  inp.mkdir()
  for k, im in enumerate(images):
    Image.fromarray(im).save(inp / f'{k:03d}.png')
  out = tmp_path / 'out'
  assert predict_cmd.main(['--workdir', run, '--input', str(inp), '--output', str(out), '--mode', 'crop']) == 0
  rows = read_csv(out / 'scores.csv')
  np.testing.assert_allclose([float(r['score']) for r in rows], eval_scores, rtol=2e-5)
  with Image.open(out / '000_overlay.png') as im:
    assert im.size == (32, 32)
  s_crop, _ = pred_crop.predict(images)
  np.testing.assert_allclose(s_crop, eval_scores, rtol=1e-5)
  # the stored evaluation number: image AUC of these scores
  labels = pipe.test_labels
  pos, neg = s_crop[labels == 1], s_crop[labels == 0]
  auc = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
  with open(os.path.join(run, 'results.json')) as f:
    assert auc == pytest.approx(json.load(f)['image_auc'], abs=1e-9)
  # full mode on images of the training geometry (32x32, no centre crop in this run) = evaluation score
  s_full, maps = predict.Predictor(run).predict(images[:5])
  np.testing.assert_allclose(s_full, eval_scores[:5], rtol=1e-5)
  assert maps[0].shape == (32, 32)


def test_pooled_image_score_in_evaluation_and_prediction(tmp_path):
  """eval.image_score='max': results.json's image AUC and crop-mode prediction use the largest pixel of the
  upsampled heatmap (NumPy: net output -> pseudo-Huber -> spec §4 upsampling -> max)."""
  config = test_config.get_config()
  config.eval.image_score = 'max'
  config.eval.train_heatmaps = False
  wd = str(tmp_path / 'run')
  train.train_and_evaluate(config, wd)
  pipe = input_pipeline.create(config)
  pred = predict.Predictor(wd, mode='crop')
  net, rec = run_lib.create_model(config, pipe.info), pred.reception
  want, means, labels = [], [], []
  for b in pipe.eval_batches():
    phi = np.asarray(jax.jit(lambda v, x: net.apply(v, x, train=False))(pred.variables, b['image']), np.float64)
    for a, ok, y in zip(np.sqrt(phi[..., 0] ** 2 + 1) - 1, b['valid'], b['label']):
      if ok > 0:
        want.append(np_upsample(a, rec.r, rec.j, rec.s, 32, 32, config.loss.gauss_std).max())
        means.append(a.mean())
        labels.append(y)
  want, labels = np.asarray(want), np.asarray(labels)
  assert not np.allclose(want, means, rtol=0.05)   # the pooled score is not the spec's mean
  got, _ = pred.predict(list(pipe.test_images))
  np.testing.assert_allclose(got, want, rtol=1e-4)
  pos, neg = want[labels == 1], want[labels == 0]
  auc = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
  with open(os.path.join(wd, 'results.json')) as f:
    assert json.load(f)['image_auc'] == pytest.approx(auc, abs=1e-9)


@pytest.mark.parametrize('name', ['FCDD_CNN28', 'FCDD_CNN224',   # FCDD_CNN32_S: the crop-mode test above
                                  pytest.param('FCDD_CNN224_VGG_F', marks=pytest.mark.slow)])
def test_prediction_net_equals_the_training_net_at_nominal_size(name):
  config = test_config.get_config()
  config.model.name = name
  # the run's compute dtype (run_test checks what auto resolves to), bfloat16 for the 224² nets on a CPU with
  # bf16 arithmetic
  config.model.dtype = 'auto'
  assert predict.prediction_net(config).dtype == jnp.dtype(run_lib.compute_dtype(config))
  if models.input_shape(name)[0] >= 224:
    assert predict.prediction_net(config).dtype == (jnp.bfloat16 if onednn.native_bf16() else jnp.float32)
  config.model.dtype = 'float32'   # the layers compared exactly below
  h, w, c = models.input_shape(name)
  ref = models.create(name, bias=config.model.bias, torch_init=config.model.torch_init,
                      bn_unbiased_var=config.model.bn_unbiased_var, frozen_bn=config.model.frozen_bn)
  x = np.random.default_rng(0).normal(size=(2, h, w, c)).astype(np.float32)
  variables = jax.jit(lambda k: ref.init(k, x, train=False))(jax.random.PRNGKey(0))
  variables = jax.tree.map(lambda v: v + 0.01, dict(variables))   # non-trivial BN statistics too
  want = np.asarray(jax.jit(lambda v: ref.apply(v, x, train=False))(variables))
  net = predict.prediction_net(config)
  got = np.asarray(jax.jit(net.apply)(variables, x))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match='takes inputs'):   # the training net keeps its nominal size
    jax.eval_shape(ref.apply, variables, jax.ShapeDtypeStruct((1, h + 8, 2 * w, c), np.float32))
  bigger = jax.ShapeDtypeStruct((1, h + 8, 2 * w, c), np.float32)
  assert jax.eval_shape(net.apply, variables, bigger).shape[1:3] == (
      (h + 8) // models.reception(name).j, 2 * w // models.reception(name).j)


def test_scaled_size_rule():
  custom = {'input_size': [224, 224], 'raw_size': [248, 248], 'test_center': True, 'resize': 'shorter'}
  mvtec = {'input_size': [224, 224], 'raw_size': [240, 240], 'test_center': False, 'resize': 'nearest'}
  assert predict.scaled_size(custom, 200, 640) == (248, 793)     # shorter side -> 248 (then no crop)
  assert predict.scaled_size(custom, 256, 256) == (248, 248)
  assert predict.scaled_size(custom, 1000, 300) == (826, 248)
  assert predict.scaled_size(mvtec, 200, 640) == (224, 716)      # squashed to 224 in evaluation -> 224
  assert predict.scaled_size(mvtec, 900, 900) == (224, 224)
  assert predict.scaled_size(mvtec, 200, 640, scale=0.5) == (100, 320)


def test_mixed_folder_corrupt_file_and_explicit_threshold(run, tmp_path, capsys):
  inp = tmp_path / 'in'
  os.makedirs(inp / 'sub')
  rng = np.random.default_rng(0)
  imgs = {'a.png': rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
          'b.png': rng.integers(0, 255, (50, 40), dtype=np.uint8),
          'sub/a.png': rng.integers(0, 255, (20, 20, 4), dtype=np.uint8)}
  for name, arr in imgs.items():
    Image.fromarray(arr).save(inp / name)
  (inp / 'broken.png').write_bytes(b'garbage')
  out = tmp_path / 'out'
  assert predict_cmd.main(['--workdir', run, '--input', str(inp), '--output', str(out), '--mode', 'crop']) == 0
  assert 'broken.png' in capsys.readouterr().err
  rows = read_csv(out / 'scores.csv')
  assert [os.path.relpath(r['path'], inp) for r in rows] == ['a.png', 'b.png', 'broken.png', 'sub/a.png']
  by = {os.path.relpath(r['path'], inp): r for r in rows}
  assert by['broken.png']['score'] == ''
  with open(os.path.join(run, 'results.json')) as f:
    thr = json.load(f)['thresholds']['image']
  with open(os.path.join(run, 'preprocessing.json')) as f:
    pp = json.load(f)
  config = test_config.get_config()
  net = models.create(config.model.name, bias=config.model.bias, torch_init=config.model.torch_init,
                      bn_unbiased_var=config.model.bn_unbiased_var, frozen_bn=config.model.frozen_bn)
  variables = predict.Predictor(run).variables
  for name, arr in imgs.items():   # crop mode by hand: gray -> RGB, alpha dropped, squash to 32x32
    a = np.repeat(arr[..., None], 3, -1) if arr.ndim == 2 else arr[..., :3]
    a = np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize((32, 32), Image.BILINEAR))
    x = (a.astype(np.float32) / 255 - np.asarray(pp['mean'], np.float32)) / np.asarray(pp['std'], np.float32)
    phi = np.asarray(net.apply(variables, x[None], train=False), np.float64)
    assert float(by[name]['score']) == pytest.approx((np.sqrt(phi ** 2 + 1) - 1).mean(), rel=2e-5)
    assert by[name]['anomalous'] == str(int(float(by[name]['score']) >= thr))
  for stem in ('in_a', 'b', 'sub_a'):
    assert os.path.exists(out / f'{stem}_overlay.png')
    assert os.path.exists(out / f'{stem}_mask.png')
  # full mode on the same folder: every overlay has its file's size
  out2 = tmp_path / 'out2'
  assert predict_cmd.main(['--workdir', run, '--input', str(inp), '--output', str(out2), '--threshold', '1e9']) == 0
  for stem, name in (('in_a', 'a.png'), ('b', 'b.png'), ('sub_a', 'sub/a.png')):
    with Image.open(out2 / f'{stem}_overlay.png') as im:
      assert im.size == (imgs[name].shape[1], imgs[name].shape[0])
  assert {r['anomalous'] for r in read_csv(out2 / 'scores.csv') if r['score']} == {'0'}


def test_errors_exit_nonzero_with_one_line(run, tmp_path, capsys, caplog):
  p = tmp_path / 'x.png'
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(p)
  assert predict_cmd.main(['--workdir', str(tmp_path), '--input', str(p), '--output', str(tmp_path / 'o2')]) == 2
  assert 'config.json not found' in capsys.readouterr().err
  gifs = tmp_path / 'gifs'
  gifs.mkdir()
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(gifs / 'only.gif')
  with caplog.at_level(logging.WARNING):
    assert predict_cmd.main(['--workdir', run, '--input', str(gifs), '--output', str(tmp_path / 'o3')]) == 2
  warning, error = capsys.readouterr().err.strip().splitlines()
  assert error.startswith('fcdd_jax.predict: error: no images in --input') and str(gifs) in error
  assert warning.startswith('fcdd_jax.predict: warning: skipped 1 file') and 'only.gif' in warning   # no WARNING:root:
  assert any('only.gif' in r.getMessage() for r in caplog.records)   # the GIF is named
  assert predict_cmd.main(['--workdir', run, '--input', str(p), '--output', str(tmp_path / 'o4'), '--scale', '0']) == 2
  assert '--scale' in capsys.readouterr().err

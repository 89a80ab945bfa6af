"""Score new images with a trained run, at their own resolution: anomaly scores, heatmap overlays and masks.

  python -m fcdd_jax.predict --workdir RUN --input PATH [--input PATH ...] --output DIR
      [--threshold T] [--mode full|crop] [--scale F] [--batch_size B]

Uses the run's config.json, preprocessing.json and newest readable checkpoint. Writes DIR/scores.csv
(`path,score,anomalous`; `anomalous` empty without a threshold), DIR/<stem>_overlay.png per image and
DIR/<stem>_mask.png when a pixel threshold is known. Threshold: --threshold, else the image threshold stored
in RUN/results.json, else none. Unreadable files are reported on stderr and get an empty score; the rest are
still scored. No image at all among the inputs is an error (exit 2).

--mode=full (default): the WHOLE image of any size and aspect ratio is scored; overlay and mask have the
file's own width and height. FCDD nets are fully convolutional, so the net runs once on the whole image:
  1. scale: the image is resized, aspect ratio kept, so that its shorter side becomes S, the side to which
     the run's evaluation transform brings a test image before the net: preprocessing.json `raw_size` when
     evaluation centre-crops (`test_center`, e.g. custom folders without masks: shorter side -> 248, then a
     224 crop), else `input_size` (e.g. MVTec 224, CIFAR-10 32). Objects thus appear at the scale the net was
     trained on whatever the file's size. `--scale F` instead resizes the file by F (e.g. 1 = its own pixels,
     when new images are crops at the training images' resolution). Resampling as in the run (nearest for
     nearest-resize runs, else bilinear with antialiasing);
  2. the same channel conversion and normalisation (mean/std or LCN) as evaluation; the input is padded at the
     bottom/right by reflection to a multiple of the net's stride j;
  3. low-resolution pseudo-Huber map; cells whose receptive-field centre i*j + s lies outside the scaled image
     (created by the padding) are dropped;
  4. score = the run's evaluation score (`eval.image_score`) over the whole image instead of the training
     crop: the mean of the remaining low-resolution cells (spec §11.7, the default), or the maximum / top p %
     of the heatmap of step 5 at the scaled size (`max`, `top<p>%`: `configs/custom.py` uses `max`);
  5. heatmap = Gaussian receptive-field upsampling of those cells to the scaled size (spec §4, separable per
     axis), then a bilinear resize to the file's width x height.
How a non-training size maps to the score: the score is a per-cell mean (or a maximum), so it does not grow
with the image size; an image that evaluation would bring exactly to the input size without cropping (a square
image, in a run without test_center, e.g. MVTec or the demo) gives the evaluation score up to resampling
differences (one resize here, the run's resize chain there); where evaluation crops (custom data without
masks), full mode also scores the border that the crop never shows, so its score can differ from the
evaluation score of the same file.
The stored thresholds were fitted on evaluation scores.
--mode=crop: the evaluation transform itself (resize, centre-crop or squash to the training input size) and
evaluation's net program (same dtype, same fused blocks): the score equals the evaluation score of the image
to float rounding (1e-5) in every dtype; overlay and mask show that crop at the net's input size.

Patch-trained runs (config data.patch_size > 0): --mode=full scores each file at native resolution (resized
only by the run's data.scale, or --scale), whole, tiled exactly over --tile pixels per side (memory bounded
by the tile): heatmap and score are those of the run's own evaluation (`native_predict`).
The net runs in the run's dtype (config.model.dtype). jit compiles once per distinct scaled size; images of
one size are batched, at most --batch_size training inputs' worth of pixels per batch.

--output (`output_dir`): absent or empty; an earlier predict output (scores.csv) only with --overwrite, which
replaces it whole; written into a temporary sibling under a lock and renamed into place when complete, so the
folder never holds a mix of two calls. Memory: before any scoring every file is checked (at most
MAX_FILE_PIXELS pixels, a scaled longer side of at most MAX_SIDE, and a net program of at most --max_memory_gb,
estimated from XLA's memory analysis of the net at its training size); a file over a limit stops the call with
one line naming it and the --scale that fits. Exit codes: 0 done, 1 no image decoded, 2 bad input (flags, run,
an image over the limits), 4 --output unusable (a file, under a file, read-only, in use, not empty) or a
write failed.
"""
import json
import math
import os

import numpy as np

from fcdd_jax.models import tiling
from fcdd_jax.serving import native_predict
from fcdd_jax.data import transforms

MODES = ('full', 'crop')
PROG = 'fcdd_jax.predict'
SCORES = 'scores.csv'
MAX_MEMORY_GB = 1.5       # default --max_memory_gb: the net program of one call (peak RSS stays below ~3 GB)
MAX_SIDE = 8192           # longest scaled side (upsampling matrices are dense: side x cells floats)
MAX_FILE_PIXELS = 8192 * 8192   # largest file (decoded, heatmap and overlay at its own size are kept on the host)
LARGE_FILE_PIXELS = 4096 * 4096  # files above this get a progress line before they are scored (writing takes long)


class ImageTooLarge(ValueError):
  """An image that cannot be scored within the memory limits; the message says which --scale would fit."""


def prediction_net(config):
  """The run's FCDD net as evaluation builds it (`run.model_options`: same parameter tree, layers, dtype and
  fused CPU blocks, so crop mode runs evaluation's own program in every dtype) with `any_size=True`: the
  fully convolutional net on inputs of any size."""
  from fcdd_jax.models import nets as models  # pylint: disable=g-import-not-at-top
  from fcdd_jax.pipeline import run  # pylint: disable=g-import-not-at-top
  return models.create(config.model.name, any_size=True, **run.model_options(config))


def scaled_size(preprocessing, h, w, scale=None):
  """(H, W) of an h x w image in full mode (step 1 of the module doc): shorter side -> the side evaluation
  brings test images to (raw_size with test_center, else input_size), or `scale` times the file's size."""
  if scale is not None:
    return max(1, round(h * scale)), max(1, round(w * scale))
  p = preprocessing
  s = min(p.get('raw_size') or p['input_size']) if p.get('test_center') else min(p['input_size'])
  # the longer side is truncated as torchvision's Resize(int) does (data/transforms.resize_shorter_crop)
  return (s, max(s, int(s * w / h))) if h <= w else (max(s, int(s * h / w)), s)


def _crop_view(img, p):
  """uint8 image as the evaluation transform crops/squashes it (display only; the net input of crop mode
  comes from transforms.make_test_transform itself)."""
  inp = tuple(p['input_size'])
  raw = tuple(p.get('raw_size') or inp)
  if p.get('resize') == 'shorter':
    img = transforms.resize_shorter_crop(img, raw[0])
  else:
    img = transforms.resize_u8(img, raw, nearest=p.get('resize') == 'nearest')
  if p.get('test_center') and img.shape[0] >= inp[0] and img.shape[1] >= inp[1]:
    y0, x0 = (img.shape[0] - inp[0]) // 2, (img.shape[1] - inp[1]) // 2
    return img[y0:y0 + inp[0], x0:x0 + inp[1]]
  return transforms.resize_u8(img, inp, nearest=True)


def _resize_float(h, size):
  """float32 [h,w] map -> size (H, W), bilinear (antialiased when shrinking)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if h.shape == tuple(size):
    return h
  return np.asarray(Image.fromarray(np.asarray(h, np.float32)).resize((size[1], size[0]), Image.BILINEAR))


class Predictor:
  """Loads a run once; `predict(images)` scores uint8 images of any size (gray/RGB/RGBA); see the module doc."""

  def __init__(self, workdir, batch_size=16, mode='full', scale=None, max_memory_gb=MAX_MEMORY_GB, tile=None):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import ml_collections  # pylint: disable=g-import-not-at-top
    from fcdd_jax.models import losses  # pylint: disable=g-import-not-at-top
    from fcdd_jax.models import nets as models
    from fcdd_jax.models import receptive
    if mode not in MODES:
      raise ValueError(f'--mode={mode!r}; allowed: {", ".join(MODES)}')
    if scale is not None and not scale > 0:
      raise ValueError(f'--scale={scale!r}; expected a positive factor (e.g. 1 for the file\'s own pixels)')
    if batch_size < 1:
      raise ValueError(f'--batch_size={batch_size}; expected >= 1')
    if not max_memory_gb > 0:
      raise ValueError(f'--max_memory_gb={max_memory_gb!r}; expected a positive number of GB')
    self.workdir, self.mode, self.scale, self.batch_size = workdir, mode, scale, int(batch_size)
    self.max_memory = float(max_memory_gb) * 1e9
    self._bytes_per_pixel = None
    for f in ('config.json', 'preprocessing.json'):
      if not os.path.exists(os.path.join(workdir, f)):
        raise FileNotFoundError(f'{os.path.join(workdir, f)} not found: --workdir must be a finished fcdd_jax run')
    with open(os.path.join(workdir, 'config.json')) as f:
      self.config = ml_collections.ConfigDict(json.load(f))
    with open(os.path.join(workdir, 'preprocessing.json')) as f:
      self.preprocessing = json.load(f)
    name = self.config.model.name
    if models.objective_of(name) != 'fcdd':
      raise ValueError(f'prediction supports FCDD nets; this run uses {name}')
    p = self.preprocessing
    self.transform = transforms.make_test_transform(p)   # the evaluation transform (crop mode)
    self.size = tuple(p['input_size'])
    self.channels = int(p['channels'])
    # --- checkpoint restore (one block; may become a call into checkpointing.py) ---
    from fcdd_jax.utils import checkpointing  # pylint: disable=g-import-not-at-top
    state, self.step = checkpointing.restore_for_inference(os.path.join(workdir, 'checkpoints'),
                                                          prog='fcdd_jax.predict')  # newest readable; says which
    self.variables = {'params': state['params'], 'batch_stats': state.get('batch_stats', {})}
    # --- end of checkpoint restore ---
    # a patch-trained run (data.patch_size): full mode scores at native resolution (times data.scale), tiled
    net, self.native = prediction_net(self.config), None
    if mode == 'crop' and native_predict.is_patch_run(self.config):
      raise ValueError('--mode=crop: this run was trained on patches (data.patch_size) and evaluates whole images '
                       'at native resolution; use --mode=full')
    if mode == 'full' and native_predict.is_patch_run(self.config):
      self.scale = float(self.config.data.get('scale', 1.0)) if scale is None else scale
      self.native = native_predict.make_scorer(self.config, p, self.variables, tile or tiling.DEFAULT_TILE, net)
    rec = self.reception = models.reception(name)
    std = self.config.loss.gauss_std

    top = losses.parse_image_score(self.config.eval.get('image_score', 'mean'))   # as the run's evaluation

    def fn(variables, x, keep, out):
      low = losses.fcdd_heatmaps(net.apply(variables, x))[:, :keep[0], :keep[1]]
      up = receptive.upsample(low, rec, out, std)
      return losses.fcdd_image_scores(low, up, top), up

    self._fn = jax.jit(fn, static_argnums=(2, 3))
    self._jnp = jnp
    self._value_transforms = {}
    self.thresholds = {}
    rpath = os.path.join(workdir, 'results.json')
    if os.path.exists(rpath):
      with open(rpath) as f:
        self.thresholds = json.load(f).get('thresholds') or {}

  # -- geometry --------------------------------------------------------------------------------------

  def scaled_size(self, h, w):
    """(H, W) at which this predictor runs the net on an h x w image (crop mode: the training input)."""
    return self.size if self.mode == 'crop' else scaled_size(self.preprocessing, h, w, self.scale)

  def padded_size(self, size):
    """Net input (H, W) for a scaled `size`: padded up to a multiple of the net's stride j."""
    j = self.reception.j
    return -(-size[0] // j) * j, -(-size[1] // j) * j

  def display(self, img):
    """The uint8 RGB image that the heatmap of `img` is aligned with (the file itself, or the crop)."""
    img = transforms.to_rgb_or_gray(img, 3)
    return _crop_view(img, self.preprocessing) if self.mode == 'crop' else img

  def _net_input(self, img):
    """float32 [H,W,C] normalised as in evaluation, unpadded; for crop mode the evaluation transform."""
    if self.mode == 'crop':
      return self.transform(img)
    p = self.preprocessing
    size = self.scaled_size(*img.shape[:2])
    img = transforms.resize_u8(transforms.to_rgb_or_gray(img, self.channels), size,
                               nearest=p.get('resize') == 'nearest')
    if size not in self._value_transforms:   # evaluation's values (mean/std or LCN) at this size, no geometry
      self._value_transforms[size] = transforms.make_test_transform(
          dict(p, input_size=list(size), raw_size=list(size), resize='bilinear', test_center=False))
    return self._value_transforms[size](img)

  def batch_rows(self, size):
    """Images of scaled `size` per batch: --batch_size images' worth of training-input pixels, fewer when
    the net program would need more than --max_memory_gb (at least 1; `check_fits` refuses larger images)."""
    if self.native is not None:   # one file per call; the tiles bound the memory
      return 1
    ph, pw = self.padded_size(size)
    rows = max(1, (self.batch_size * self.size[0] * self.size[1]) // (ph * pw))
    return max(1, min(rows, int(self.max_memory // self.program_bytes(size, 1))))

  def bytes_per_pixel(self):
    """Bytes the compiled net program needs per net-input pixel (XLA's memory analysis of the program at
    the training input size, one image: temporaries + input + output). Programs grow linearly with the
    pixels, so this bounds every size without compiling it (compiling a huge size alone can exhaust memory)."""
    if self._bytes_per_pixel is None:
      import jax  # pylint: disable=g-import-not-at-top
      shape = self.padded_size(self.size)
      x = jax.ShapeDtypeStruct((1,) + shape + (self.channels,), self._jnp.float32)
      m = self._fn.lower(self.variables, x, self.keep(self.size), self.size).compile().memory_analysis()
      used = (m.temp_size_in_bytes + m.output_size_in_bytes + x.size * 4) if m is not None else 4096 * x.size
      self._bytes_per_pixel = used / (shape[0] * shape[1])
    return self._bytes_per_pixel

  def keep(self, size):
    """Low-resolution cells per axis whose receptive-field centre lies inside the scaled image."""
    j, s = self.reception.j, self.reception.s
    return tuple(max(1, math.ceil((n - s) / j)) for n in size)

  def program_bytes(self, size, rows):
    """Estimated memory of scoring `rows` images of scaled `size` in one call: the net program (linear in
    the pixels) plus the upsampling matrices, built on the host and baked into the program (out x cells per
    axis, ~25 bytes per entry while they are built)."""
    ph, pw = self.padded_size(size)
    kh, kw = self.keep(size)
    return rows * ph * pw * self.bytes_per_pixel() + 25 * (size[0] * kh + size[1] * kw)

  def check_fits(self, size, name='image', file_size=None):
    """Raises ImageTooLarge (a ValueError, one line) when one image of scaled `size` cannot be scored
    within MAX_SIDE and --max_memory_gb; says which --scale would fit."""
    what = f'{file_size[0]}x{file_size[1]} pixels, ' if file_size else ''
    now = self.scale or (size[0] / file_size[0] if file_size else None)   # the factor applied to the file
    if max(size) > MAX_SIDE:   # no compile needed to know
      fits, why, more = MAX_SIDE / max(size), f'has a longer side over {MAX_SIDE}', ''
    elif self.native is not None:   # patch-trained run: tiled, memory bounded by --tile
      return
    else:
      need = self.program_bytes(size, 1)
      if need <= self.max_memory:
        return
      fits, why, more = math.sqrt(self.max_memory / need), (f'would need about {need / 1e9:.1f} GB for the net '
                                                            f'(limit --max_memory_gb={self.max_memory / 1e9:g})'), \
          ', or raise --max_memory_gb'

    hint = f'--scale {self._fitting_scale(fits * now, file_size):.3g} or smaller, ' if self.mode == 'full' and now else ''
    raise ImageTooLarge(
        f'{name}: {what}scored at {size[0]}x{size[1]} ({self.mode} mode) {why}; use {hint}crop or split the '
        f'image{more}')

  def _fitting_scale(self, estimate, file_size):
    """The estimate rounded down to 3 digits and lowered until the file scaled by it fits (padding and the
    upsampling matrices make the need not exactly quadratic in the scale): a hint that works when followed."""
    s = math.floor(estimate * 1000) / 1000
    while file_size and s > 0.001:
      size = scaled_size(self.preprocessing, *file_size, scale=s)
      if max(size) <= MAX_SIDE and self.program_bytes(size, 1) <= self.max_memory:
        break
      s = round(s - 0.001, 3)
    return s

  # -- scoring ---------------------------------------------------------------------------------------

  def predict(self, images):
    """uint8 images of any size -> (scores [n] float64, list of n float32 heatmaps).

    Heatmaps have each image's own height x width in full mode, the net input size in crop mode."""
    scores = np.zeros(len(images))
    maps = [None] * len(images)
    if self.native is not None:   # patch-trained run: whole files at native resolution (native_predict)
      for i, im in enumerate(images):
        self.check_fits(self.scaled_size(*np.asarray(im).shape[:2]))
        scores[i], maps[i] = native_predict.score(self.native, im, self.channels, self.scale)
      return scores, maps
    groups = {}   # one compiled shape per scaled size
    for i, im in enumerate(images):
      groups.setdefault(self.scaled_size(*np.asarray(im).shape[:2]), []).append(i)
    for size in groups:
      self.check_fits(size)
    for size, idx in groups.items():
      shape = self.padded_size(size)
      keep = self.keep(size)
      rows = min(self.batch_rows(size), len(idx))
      for c in range(0, len(idx), rows):
        chunk = idx[c:c + rows]
        xs = []
        for i in chunk:
          x = self._net_input(np.asarray(images[i]))
          ph, pw = shape[0] - x.shape[0], shape[1] - x.shape[1]
          xs.append(np.pad(x, ((0, ph), (0, pw), (0, 0)), mode='symmetric') if ph or pw else x)
        xs += [np.zeros_like(xs[0])] * (rows - len(xs))
        sc, hm = self._fn(self.variables, self._jnp.asarray(np.stack(xs)), keep, tuple(size))
        sc, hm = np.asarray(sc), np.asarray(hm)
        for k, i in enumerate(chunk):
          scores[i] = sc[k]
          maps[i] = hm[k] if self.mode == 'crop' else _resize_float(hm[k], np.asarray(images[i]).shape[:2])
    return scores, maps


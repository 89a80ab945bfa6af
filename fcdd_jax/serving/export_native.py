"""The exported function of a patch-trained run (config data.patch_size > 0, issue 27): whole images at their
native resolution.

A patch-trained run scores a file at its own pixels (`native_predict`, `native_eval`): no resize to a training
size, the net over the whole image, the Gaussian receptive-field upsampling of the whole low-resolution map to
the image's height x width, and the run's `eval.image_score` of that map. The exported function does the same
with symbolic height and width (jax.export shape polymorphism; `--input_size HxW` fixes them): uint8 images
[N,H,W,C] -> channels and the run's mean/std normalisation -> one pass of the net over the whole image ->
pseudo-Huber map -> heatmap [N,H,W] (upsampling matrices built in-graph for the symbolic sizes) and score [N].
predict's tiles stitch to exactly this one pass (`models/tiling.py`), so score and heatmap equal predict's
to float rounding.

Memory: the net runs over the whole image in one pass, so the exported program's memory grows linearly with
the image's pixels (there is no tiling inside the function: the number and shapes of the tiles depend on H and
W, which are symbolic here). DEPLOYING.md ("Large images") gives the measured bytes per pixel; images beyond
a few megapixels are for `fcdd_jax.predict`, whose memory is bounded by its tile.

Runs trained at `data.scale` != 1 are refused: predict resizes their files by that factor first, and the
resized size (Python's round of H * scale) is not a symbolic dimension.
"""
from fcdd_jax.serving import export_preprocess


def image_scores(low, heat, top):
  """`eval.image_score` of maps of symbolic size (losses.fcdd_image_scores needs a static pixel count):
  top=None: the mean of `low` [N,h,w]; else the mean of the max(1, round(top*H*W)) largest pixels of `heat`
  [N,H,W] (round half to even, as Python's round; top=0: the maximum)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  if top is None:
    return jnp.mean(low, axis=(1, 2))
  flat = heat.reshape(heat.shape[0], -1)
  if top == 0:
    return jnp.max(flat, axis=1)
  n = flat.shape[1]
  with jax.enable_x64(True):
    k = jnp.maximum(1.0, jnp.round(jnp.float64(top) * jnp.asarray(n, jnp.float64)))
    rank = jnp.arange(n, dtype=jnp.float64)
    take = (rank >= jnp.asarray(n, jnp.float64) - k)[None, :]
    k32 = k.astype(jnp.float32)
  ordered = jnp.sort(flat, axis=1)   # sort, not lax.top_k: TF's StableHLO reads it
  return jnp.sum(jnp.where(take, ordered, 0.0), axis=1) / k32


def make_inference_fn(run, c_in):
  """fn(variables, uint8 images [N,H,W,c_in]) -> {'score', 'heatmap'[, 'anomalous']} of the patch-trained run
  `run` (exporter.load_run), at the images' own size."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from fcdd_jax.models import losses  # pylint: disable=g-import-not-at-top
  from fcdd_jax.models import nets as models
  from fcdd_jax.models import receptive
  from fcdd_jax.pipeline import run as run_lib
  config = run['config']
  scale = float(config.data.get('scale', 1.0))
  if scale != 1.0:
    raise export_preprocess.ExportError(
        f'config.json data.scale={scale}: only runs trained at data.scale=1 export (the exported function scores '
        'images at their own pixels); score this run with fcdd_jax.predict, which resizes files by data.scale')
  name = config.model.name
  preprocess = export_preprocess.make_native_preprocess(run['preprocessing'], c_in)
  net = models.create(name, any_size=True, **run_lib.model_options(config))   # predict's net (prediction_net)
  rec = models.reception(name)
  std = config.loss.gauss_std
  threshold = run['thresholds'].get('image')
  top = losses.parse_image_score(config.eval.get('image_score', 'mean'))

  def fn(variables, images):
    if images.ndim != 4 or images.shape[-1] != c_in:
      raise export_preprocess.ExportError(f'images: expected uint8 [N,H,W,{c_in}], got shape {images.shape}')
    _, h, w, _ = images.shape
    low = losses.fcdd_heatmaps(net.apply(variables, preprocess(images), train=False))
    heat = receptive.upsample(low, rec, (h, w), std)
    out = {'score': image_scores(low, heat, top), 'heatmap': heat}
    if threshold is not None:
      out['anomalous'] = out['score'] >= jnp.float32(threshold)
    return out
  return fn

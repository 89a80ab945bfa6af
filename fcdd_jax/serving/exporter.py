"""Export a trained run for serving: a TensorFlow SavedModel (TF Serving) and serialized StableHLO.

  python -m fcdd_jax.export --workdir RUN --output DIR [--format savedmodel|stablehlo|both]
      [--input_channels C] [--input_size HxW] [--platforms cpu[,cuda,tpu]] [--version 1] [--overwrite]

The exported function is the whole inference path of the run: uint8 images [N,H,W,C] (any N; any H, W
unless --input_size fixes them) -> the run's test preprocessing (channels, resize/crop, normalisation or
LCN, from RUN/preprocessing.json) -> the net of the newest readable checkpoint (BatchNorm in inference
mode) -> score [N] (the run's evaluation score, `eval.image_score`: by default the mean of the
low-resolution pseudo-Huber map, or the maximum / top p % of the heatmap before it is mapped back) and the Gaussian
receptive-field upsampled heatmap, mapped back onto the input pixels: heatmap [N,H,W] float32. When
RUN/results.json stores an image threshold, `anomalous [N]` (bool, score >= threshold) is a third output.

Written to DIR:
  DIR/<version>/          SavedModel, signature `serving_default` (input `images`), params as variables;
                          the numbered directory is the layout TF Serving loads (--model_base_path=DIR)
  DIR/model.stablehlo     `jax.export` serialization, params baked in as constants
  DIR/metadata.json       thresholds, preprocessing, net, checkpoint step, input/output spec (also copied
                          to DIR/<version>/assets.extra/fcdd_metadata.json)

DIR must be absent or empty; an earlier export in it (metadata.json) is replaced whole with --overwrite and
kept otherwise; a file or a folder with other files is refused. The export is built in a temporary sibling under
a lock and renamed into place when complete (`output_dir`), so DIR never mixes two exports. metadata.json
records `training_finished` (false, with one warning, for a run whose training had not ended). Exit codes: 0,
2 bad flags or run, 4 --output unusable or a write failed.

Preprocessing is `data.transforms.make_test_transform` (the evaluation transform, predict --mode crop)
reproduced in jnp (`export_preprocess`: bit-exact Pillow resizes), so `score` equals
`fcdd_jax.serving.predictor.Predictor(mode='crop')` for images of any size, to float rounding. The heatmap goes back to
the input grid by the inverse of the geometry (bilinear, antialiased when shrinking); input pixels outside
the scored area (centre crops) get heatmap 0. The net runs in the run's dtype (config.model.dtype), as in
predict.

A patch-trained run (config data.patch_size > 0, preprocessing.json resize=native) exports its native-
resolution scoring instead (`export_native`): no resize, the net over the whole image in one pass, the
heatmap at the image's own size; score and heatmap equal `fcdd_jax.predict` (--mode full) of that run.
"""
import json
import os
import shutil

import numpy as np

from fcdd_jax.serving import messages
from fcdd_jax.serving import export_native
from fcdd_jax.serving import export_preprocess
from fcdd_jax.serving import output_dir
from fcdd_jax.utils import tf_setup

PROG = 'fcdd_jax.export'
METADATA = 'metadata.json'


# ----------------------------------------------------------------------------------------------------
# Loading a run

def load_run(workdir):
  """config, preprocessing, variables (params + batch_stats), thresholds and step of a finished run.

  The newest readable checkpoint is used (checkpointing.restore_for_inference, as fcdd_jax.predict)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from fcdd_jax.utils import checkpointing  # pylint: disable=g-import-not-at-top
  for f in ('config.json', 'preprocessing.json'):
    if not os.path.exists(os.path.join(workdir, f)):
      raise FileNotFoundError(f'{os.path.join(workdir, f)} not found: --workdir must be a finished fcdd_jax run')
  with open(os.path.join(workdir, 'config.json')) as f:
    config = ml_collections.ConfigDict(json.load(f))
  with open(os.path.join(workdir, 'preprocessing.json')) as f:
    preprocessing = json.load(f)
  thresholds = {}
  rpath = os.path.join(workdir, 'results.json')
  if os.path.exists(rpath):
    with open(rpath) as f:
      thresholds = json.load(f).get('thresholds') or {}
  state, step, finished = checkpointing.restore_for_inference(os.path.join(workdir, 'checkpoints'), prog=PROG,
                                                              details=True)
  variables = {'params': state['params'], 'batch_stats': state.get('batch_stats') or {}}
  return dict(config=config, preprocessing=preprocessing, variables=variables, thresholds=thresholds,
              step=int(step), finished=finished, workdir=os.path.abspath(workdir))


# ----------------------------------------------------------------------------------------------------
# The exported function

def make_inference_fn(run, c_in=None):
  """fn(variables, uint8 images [N,H,W,c_in]) -> {'score', 'heatmap'[, 'anomalous']} of run `run`
  (from `load_run`). c_in defaults to the run's channels."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from fcdd_jax.models import losses  # pylint: disable=g-import-not-at-top
  from fcdd_jax.models import nets as models
  from fcdd_jax.models import receptive
  from fcdd_jax.pipeline import run as run_lib
  config, p = run['config'], run['preprocessing']
  name = config.model.name
  if models.objective_of(name) != 'fcdd':
    raise export_preprocess.ExportError(f'config.json model.name={name}: only FCDD nets export (they give heatmaps)')
  c_in = int(p['channels']) if c_in is None else int(c_in)
  if p.get('resize') == 'native':   # patch-trained run: whole images at their own size (export_native)
    return export_native.make_inference_fn(run, c_in)
  preprocess = export_preprocess.make_preprocess(p, c_in)
  net = models.create(name, **run_lib.model_options(config))  # as predict: same layers and compute dtype
  size = tuple(int(v) for v in p['input_size'])
  std = config.loss.gauss_std
  threshold = run['thresholds'].get('image')
  top = losses.parse_image_score(config.eval.get('image_score', 'mean'))   # the score the threshold is for

  def fn(variables, images):
    if images.ndim != 4 or images.shape[-1] != c_in:
      raise export_preprocess.ExportError(f'images: expected uint8 [N,H,W,{c_in}], got shape {images.shape}')
    _, h, w, _ = images.shape
    x, maps = preprocess(images)
    phi = net.apply(variables, x, train=False)
    low = losses.fcdd_heatmaps(phi)
    heat = receptive.upsample(low, net.reception, size, std)
    out = {'score': losses.fcdd_image_scores(low, heat, top),
           'heatmap': export_preprocess.heatmap_to_input(heat, (h, w), maps)}
    if threshold is not None:
      out['anomalous'] = out['score'] >= jnp.float32(threshold)
    return out
  return fn


def input_shape_spec(c_in, input_size=None):
  """Polymorphic shape string for jax.export / jax2tf: 'b, h, w, C' (or fixed H, W)."""
  hw = 'h, w' if input_size is None else f'{int(input_size[0])}, {int(input_size[1])}'
  return f'b, {hw}, {int(c_in)}'


def export_stablehlo(fn, variables, c_in, input_size=None, platforms=('cpu',)):
  """jax.export.Exported of images -> outputs, params baked in as constants."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  shape = jax.export.symbolic_shape(input_shape_spec(c_in, input_size))
  consts = jax.tree.map(jnp.asarray, variables)
  return jax.export.export(jax.jit(lambda images: fn(consts, images)), platforms=tuple(platforms))(
      jax.ShapeDtypeStruct(shape, jnp.uint8))


def export_savedmodel(fn, variables, c_in, path, input_size=None, platforms=('cpu',)):
  """Writes a SavedModel (signature serving_default: images uint8 [N,H,W,C]) with params as variables."""
  tf = tf_setup.tensorflow()
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  tf_fn = jax2tf.convert(fn, polymorphic_shapes=[None, input_shape_spec(c_in, input_size)], with_gradient=False,
                         native_serialization_platforms=tuple(platforms))
  module = tf.Module()
  module.params = tf.nest.map_structure(lambda a: tf.Variable(np.asarray(a), trainable=False), variables)
  hw = [None, None] if input_size is None else [int(v) for v in input_size]

  @tf.function(autograph=False, input_signature=[tf.TensorSpec([None] + hw + [c_in], tf.uint8, name='images')])
  def serve(images):
    return tf_fn(module.params, images)
  module.serve = serve
  tf.saved_model.save(module, path, signatures={'serving_default': serve})


def metadata(run, c_in, input_size, platforms, files):
  import jax  # pylint: disable=g-import-not-at-top
  from fcdd_jax.models import nets as models  # pylint: disable=g-import-not-at-top
  name = run['config'].model.name
  how = run['config'].eval.get('image_score', 'mean')
  outputs = {'score': f'float32 [N]: the evaluation score (eval.image_score={how}: mean = of the low-resolution '
                      'pseudo-Huber map; max / top<p>% = of the upsampled heatmap)',
             'heatmap': 'float32 [N,H,W]: Gaussian receptive-field upsampled map on the input pixels'}
  thr = run['thresholds']
  if thr.get('image') is not None:
    outputs['anomalous'] = f'bool [N]: score >= thresholds.image ({thr["image"]:.6g})'
  hw = ['H', 'W'] if input_size is None else [int(v) for v in input_size]
  if run['preprocessing'].get('resize') == 'native':
    outputs['heatmap'] += ' (native resolution: the net ran over the whole image, no resize)'
  return {'format_version': 1, 'workdir': run['workdir'], 'checkpoint_step': run['step'],
          'training_finished': run['finished'], 'model': name,
          'reception': dict(models.reception(name)._asdict()), 'gauss_std': float(run['config'].loss.gauss_std),
          'input': {'name': 'images', 'dtype': 'uint8', 'shape': ['N'] + hw + [int(c_in)]},
          'outputs': outputs, 'thresholds': thr, 'preprocessing': run['preprocessing'],
          'platforms': list(platforms), 'jax_version': jax.__version__, 'files': files}


def parse_size(s):
  try:
    h, w = (int(v) for v in s.lower().split('x'))
    if h <= 0 or w <= 0:
      raise ValueError
  except ValueError:
    raise export_preprocess.ExportError(
        f'--input_size={s!r}: expected HxW with positive integers, e.g. 224x224') from None
  return h, w


def run(workdir, output, *, fmt='both', input_channels=None, input_size=None, platforms='cpu', version=1,
        overwrite=False):
  """The export command (module doc; its command line is `fcdd_jax.export`): the run in `workdir` exported
  into the folder `output`. Returns the exit code; errors are one line."""
  with messages.one_line_logging(PROG):
    try:
      size, platform_list = check_flags(input_size, platforms, version)
      with output_dir.staged(output, overwrite, marker=METADATA) as tmp:
        run_ = load_run(workdir)
        if not run_['finished']:
          messages.warn(PROG, f'training of {run_["workdir"]} had not finished (checkpoint step {run_["step"]}); '
                           f'exporting it anyway, marked "training_finished": false in {METADATA}')
        c_in = int(run_['preprocessing']['channels']) if input_channels is None else input_channels
        meta = write_export(run_, make_inference_fn(run_, c_in), tmp, fmt, c_in, size, platform_list, version)
    except output_dir.OutputError as e:
      return messages.error(PROG, e, messages.EXIT_FILE_SYSTEM)
    except (ValueError, FileNotFoundError) as e:  # ExportError, NoUsableCheckpointError, ...
      return messages.error(PROG, e, messages.EXIT_BAD_INPUT)
    except OSError as e:   # writing the artefacts (disk full, ...): nothing of this call is left in --output
      return messages.error(PROG, messages.os_error_message(e), messages.EXIT_FILE_SYSTEM)
  thr = run_['thresholds'].get('image')
  print(f'exported {meta["model"]} (checkpoint step {run_["step"]}) -> {output}: '
        f'{", ".join(sorted(meta["files"].values()))}, {METADATA}'
        + (f' (image threshold {thr:.6g})' if thr is not None else ' (no threshold)'))
  return messages.EXIT_OK


def check_flags(input_size, platforms, version):
  """(input size (H, W) or None, platforms tuple) from the flags' values; ExportError (one line) for a bad one."""
  size = parse_size(input_size) if input_size else None
  names = tuple(s.strip() for s in platforms.split(',') if s.strip())
  bad = [s for s in names if s not in ('cpu', 'cuda', 'rocm', 'tpu')]
  if bad or not names:
    raise export_preprocess.ExportError(
        f'--platforms={platforms!r}: expected a comma-separated subset of cpu, cuda, rocm, tpu')
  if version < 1:
    raise export_preprocess.ExportError(
        f'--version={version}: expected a positive integer (TF Serving version directory)')
  return size, names


def write_export(run, fn, out, fmt, c_in, input_size, platforms, version):
  """Writes the chosen formats and metadata.json into the (fresh) folder `out`; returns the metadata."""
  files = {}
  if fmt in ('stablehlo', 'both'):
    exp = export_stablehlo(fn, run['variables'], c_in, input_size, platforms)
    with open(os.path.join(out, 'model.stablehlo'), 'wb') as f:
      f.write(exp.serialize())
    files['stablehlo'] = 'model.stablehlo'
  sm_dir = os.path.join(out, str(version))
  if fmt in ('savedmodel', 'both'):
    export_savedmodel(fn, run['variables'], c_in, sm_dir, input_size, platforms)
    files['savedmodel'] = str(version)
  meta = metadata(run, c_in, input_size, platforms, files)
  with open(os.path.join(out, METADATA), 'w') as f:
    json.dump(meta, f, indent=2)
  if 'savedmodel' in files:
    os.makedirs(os.path.join(sm_dir, 'assets.extra'), exist_ok=True)
    shutil.copy(os.path.join(out, METADATA), os.path.join(sm_dir, 'assets.extra', 'fcdd_metadata.json'))
  return meta


"""Shared helpers: JSON lines, device kind, median timing, the engine's run on synthetic batches."""
import json
import os
import platform
import statistics
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the checkout (benchmarks run from it)
NETS = {'FCDD_CNN28_W': 128, 'FCDD_CNN32_LW3K': 128, 'FCDD_CNN224_VGG_F': 16, 'FCDD_CNN224_VGG_NOPT': 32}


def build_run(net_name, dtype='float32', steps_per_epoch=100, **model_options):
  """The engine's run builder (`fcdd_jax.pipeline.run.build_run`) for `net_name` at its nominal input size, with the
  default config and SGD: (built, state, input shape). The state is created unsharded (one device), as the
  benchmarks time the compiled step itself. `model_options` override the config's (e.g. remat)."""
  import jax  # pylint: disable=g-import-not-at-top
  from fcdd_jax.models import nets as models  # pylint: disable=g-import-not-at-top
  from fcdd_jax.pipeline import run
  from fcdd_jax.configs import default  # pylint: disable=g-import-not-at-top
  cfg = default.get_config()
  cfg.model.name = net_name
  cfg.model.dtype = dtype
  cfg.optim.name = 'sgd'
  shape = models.input_shape(net_name)
  data = run.DataShape(shape)
  built = run.build_run(cfg, data, steps_per_epoch, model=run.create_model(cfg, data, **model_options))
  return built, jax.jit(built.make_state)(jax.random.PRNGKey(0)), shape


def emit(**kw):
  print(json.dumps(kw), flush=True)
  return kw


def cpu_kind():
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip() + f' x{os.cpu_count()}'
  except OSError:
    pass
  return platform.processor() or 'cpu'


def median_time(fn, steps, warmup=1):
  for _ in range(warmup):
    fn()
  ts = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return statistics.median(ts)


def load_avg():
  try:
    return os.getloadavg()[0]
  except OSError:
    return None


def train_gflop_per_image(net_name):
  """GFLOP of one train step per image of an FCDD net, convolutions only (2 per multiply-add): forward, weight
  gradient of every trainable conv, input gradient of every conv above the first trainable one (frozen `_F`
  layers and the image need none). Pools, BN and activations are not counted."""
  from fcdd_jax.models import feature_stack  # pylint: disable=g-import-not-at-top
  from fcdd_jax.models import nets as models
  (h, w, cin), layers = models.FCDD_ARCHS[net_name]
  frozen = set(feature_stack.VGG_FROZEN_INDICES) if net_name.endswith('_F') else set()
  convs = []  # (flop of one pass, trainable)
  for l in layers:
    if l[0] == 'conv':
      _, cout, k, s, p = l[:5]
      h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
      convs.append((2.0 * h * w * k * k * cin * cout, (l[7] if len(l) > 7 else None) not in frozen))
      cin = cout
    else:
      _, k, s, p = l[:4]
      h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
  convs.append((2.0 * h * w * cin, True))  # final 1x1 conv to one channel
  total, grad_below = 0.0, False
  for f, trainable in convs:
    total += f + (f if trainable else 0.0) + (f if grad_below else 0.0)
    grad_below = grad_below or trainable
  return total / 1e9


def _status_kb(key):
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(key + ':'):
        return int(line.split()[1])
  return 0


def step_peak_rss(fn):
  """Runs fn() and returns (peak resident set during it) - (resident set before it), in bytes: the memory the
  call itself takes at its peak (Linux: resets VmHWM through /proc/self/clear_refs; None elsewhere). Memory an
  allocator kept mapped from an earlier call is already resident before it and does not count."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
  except OSError:
    fn()
    return None
  before = _status_kb('VmRSS')
  fn()
  return (_status_kb('VmHWM') - before) * 1024


def peak_rss():
  """Peak resident set of this process so far, bytes (VmHWM; it is reset by step_peak_rss)."""
  return _status_kb('VmHWM') * 1024


def restore_finished_run(run_dir):
  """A finished run of `python -m fcdd_jax.main` for eval-only experiments: (pipeline, built run, state at its
  final checkpoint, the jitted eval step), from RUN_DIR/config.json and RUN_DIR/checkpoints."""
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from fcdd_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from fcdd_jax.pipeline import run, steps  # pylint: disable=g-import-not-at-top
  from fcdd_jax.utils import checkpointing  # pylint: disable=g-import-not-at-top
  with open(os.path.join(run_dir, 'config.json')) as f:
    c = ml_collections.ConfigDict(json.load(f))
  pipe = input_pipeline.create(c)
  built = run.build_run(c, pipe.info, pipe.info.steps_per_epoch)
  ck = checkpointing.Checkpointer(os.path.join(run_dir, 'checkpoints'), max_to_keep=1, asynchronous=False)
  state, _, _ = ck.restore_latest(built.init_state(jax.random.PRNGKey(0)))
  ck.close()
  return pipe, built, state, steps.compile_eval(built)


def score_heatmaps(labels, heatmaps, masks=None):
  """A run's scoring of full-resolution test heatmaps [N,H,W]: image AUC by the maximum and by the mean, pixel
  AUC and AUPRO at the masks' resolution (masks: the test masks at their original size, or None), border
  ratio (16 px) of the nominal heatmaps."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from fcdd_jax.evaluation import metrics as M  # pylint: disable=g-import-not-at-top
  h = np.asarray(heatmaps)
  r = {'image_auc_max': float(M.roc_auc(labels, h.reshape(len(h), -1).max(1))),
       'image_auc_mean': float(M.roc_auc(labels, h.reshape(len(h), -1).mean(1)))}
  if masks is not None:
    maps = [M.resize_nearest(x, m.shape) for x, m in zip(h, masks)]
    r['pixel_auc'] = float(M.pixel_auc(masks, np.stack(maps).astype(np.float32)))
    r['aupro'] = float(M.aupro([masks[i].astype(np.uint8) for i in range(len(masks))], maps))
  s, a = M.border_share(h[labels == 0], band=16)
  r['border'] = s / a
  return r

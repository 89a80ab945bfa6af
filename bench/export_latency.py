"""Latency and throughput of the exported model (fcdd_jax.export) next to fcdd_jax.predict, on this machine.

  python -m bench.export_latency --workdir RUN [--batches 1,32] [--steps 5] [--image_size HxW]
  python -m bench.export_latency --make_run cnn28_w --workdir RUN   # first train a short FCDD_CNN28_W run
                                                                      # on generated 28x28 gray data (LCN)

RUN is exported (both formats) into a temporary directory; then, on the same random uint8 images (default:
the run's raw size, i.e. what evaluation resizes a test image to), one process times, round-robin step by
step so that machine load hits all alike:
  predict_crop   fcdd_jax.serving.predictor.Predictor(mode='crop').predict: host preprocessing (Pillow/NumPy) + jitted
                 net; the outputs the export reproduces (heatmaps stay at the net input size)
  predict_full   Predictor(mode='full') (predict's default: whole image at the run's scale; other work)
  stablehlo      jax.jit(jax.export.deserialize(model.stablehlo).call), params as constants
  savedmodel     tf.saved_model.load(DIR/1).signatures['serving_default'] (TF's XlaCallModule), in process
One JSON line per (impl, batch): median latency per call (ms), img/s, first call (s, includes compilation).
"""
import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench import common

IMPLS = ('predict_crop', 'predict_full', 'stablehlo', 'savedmodel')


def _write_idx(path, arr):
  header = bytes([0, 0, 8, arr.ndim]) + b''.join(int(s).to_bytes(4, 'big') for s in arr.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + np.asarray(arr, np.uint8).tobytes())


def make_cnn28_w_run(workdir, steps=4):
  """A short fmnist-shaped run (configs/fmnist.py, FCDD_CNN28_W, LCN preprocessing) on generated idx files:
  smooth random 28x28 gray images, 64 train and 8 test per class; Gaussian-noise anomalies (no OE download)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  data = tempfile.mkdtemp(prefix='fmnist_generated_')
  rng = np.random.default_rng(0)
  def images(n):
    out = [np.asarray(Image.fromarray(rng.integers(0, 256, (7, 7), dtype=np.uint8)).resize((28, 28), Image.BICUBIC))
           for _ in range(n)]
    return np.stack(out)
  _write_idx(os.path.join(data, 'train-images-idx3-ubyte.gz'), images(640))
  _write_idx(os.path.join(data, 'train-labels-idx1-ubyte.gz'), np.repeat(np.arange(10), 64))
  _write_idx(os.path.join(data, 't10k-images-idx3-ubyte.gz'), images(80))
  _write_idx(os.path.join(data, 't10k-labels-idx1-ubyte.gz'), np.repeat(np.arange(10), 8))
  cmd = [sys.executable, '-m', 'fcdd_jax.main', '--config', os.path.join(common.ROOT, 'configs', 'fmnist.py'),
         '--workdir', workdir, f'--config.data.root={data}', '--config.data.noise_mode=gaussian',
         f'--config.num_train_steps={steps}', '--config.batch_size=32', '--config.log_every_steps=2',
         f'--config.checkpoint_every_steps={steps}']
  print(' '.join(cmd), file=sys.stderr, flush=True)
  subprocess.run(cmd, cwd=common.ROOT, check=True)


def _parse_size(s):
  h, w = (int(v) for v in s.lower().split('x'))
  return h, w


def measure(workdir, batches, steps, image_size=None, impls=IMPLS):
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  from fcdd_jax.serving import exporter as export  # pylint: disable=g-import-not-at-top
  from fcdd_jax.serving import predictor as predict
  out = tempfile.mkdtemp(prefix='fcdd_export_')
  t = time.perf_counter()
  if export.run(workdir, out, overwrite=True) != 0:
    raise SystemExit(f'export of {workdir} failed')
  export_s = time.perf_counter() - t
  run = export.load_run(workdir)
  p = run['preprocessing']
  name = run['config'].model.name
  size = image_size or tuple(p.get('raw_size') or p['input_size'])
  channels = int(p['channels'])
  sizes = {'stablehlo_bytes': os.path.getsize(os.path.join(out, 'model.stablehlo')),
           'savedmodel_bytes': sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(out, '1'))
                                   for f in fs)}
  common.emit(impl='export', net=name, seconds=round(export_s, 2), **sizes, device_kind=common.cpu_kind(),
              load=common.load_avg())
  exp_call = jax.jit(jax.export.deserialize(bytearray(open(os.path.join(out, 'model.stablehlo'), 'rb').read())).call)
  serve = tf.saved_model.load(os.path.join(out, '1')).signatures['serving_default']
  rng = np.random.default_rng(0)
  for b in batches:
    x = rng.integers(0, 256, (b,) + tuple(size) + (channels,), dtype=np.uint8)
    imgs = list(x[..., 0] if channels == 1 else x)
    preds = {m: predict.Predictor(workdir, batch_size=b, mode=m) for m in ('crop', 'full')}
    fns = {'predict_crop': lambda: preds['crop'].predict(imgs),
           'predict_full': lambda: preds['full'].predict(imgs),
           'stablehlo': lambda: jax.block_until_ready(exp_call(x)),
           'savedmodel': lambda: {k: v.numpy() for k, v in serve(images=tf.constant(x)).items()}}
    first, times = {}, {k: [] for k in impls}
    for k in impls:
      t = time.perf_counter()
      fns[k]()
      first[k] = time.perf_counter() - t
    for k in impls:   # one more warm-up call each
      fns[k]()
    for _ in range(steps):
      for k in impls:
        t = time.perf_counter()
        fns[k]()
        times[k].append(time.perf_counter() - t)
    for k in impls:
      sec = float(np.median(times[k]))
      common.emit(impl=k, net=name, batch=b, image_size=f'{size[0]}x{size[1]}', latency_ms=round(1000 * sec, 2),
                  img_per_s=round(b / sec, 2), first_call_s=round(first[k], 2), steps=steps,
                  device_kind=common.cpu_kind(), load=common.load_avg())


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--workdir', required=True)
  ap.add_argument('--batches', default='1,32')
  ap.add_argument('--steps', type=int, default=5)
  ap.add_argument('--image_size', default=None, help='HxW of the timed images (default: the run\'s raw size)')
  ap.add_argument('--impls', default=','.join(IMPLS))
  ap.add_argument('--make_run', choices=('cnn28_w',), default=None,
                  help='train a short run into --workdir first (generated data)')
  ap.add_argument('--make_run_steps', type=int, default=4)
  a = ap.parse_args(argv)
  if a.make_run:
    make_cnn28_w_run(a.workdir, a.make_run_steps)
  impls = tuple(s for s in a.impls.split(',') if s)
  if set(impls) - set(IMPLS):
    raise SystemExit(f'--impls={a.impls!r}: expected a subset of {",".join(IMPLS)}')
  measure(a.workdir, [int(b) for b in a.batches.split(',')], a.steps,
          _parse_size(a.image_size) if a.image_size else None, impls)


if __name__ == '__main__':
  main()

"""Issue 28 item 12: evaluation, `predict --mode crop` and the export give the same score in each compute dtype.

Evaluation's score is recomputed here from evaluation's own net (`run.create_model`, the run's dtype and fused
CPU blocks) on evaluation's batches, reduced in NumPy float64; the stored image AUC checks that these are the
scores the run evaluated. On 00bac8f predict ran unfused feature stacks: equal in float32, not in bfloat16."""
import json
import os

import jax
import numpy as np
import pytest

from fcdd_jax.configs import test as test_config
from fcdd_jax import export
from fcdd_jax import input_pipeline
from fcdd_jax import predict
from fcdd_jax import run as run_lib
from fcdd_jax import train

# float32: float rounding only. bfloat16: crop mode is evaluation's program (same rounding); the export's
# in-graph resize/normalisation differs from Pillow+NumPy by float rounding (<= 2e-5 of the values), which
# can move bfloat16 input roundings: the tolerance stated in docs/DEPLOYING.md.
EXPORT_RTOL = {'float32': 1e-4, 'bfloat16': 1e-2}


def _auc(scores, labels):
  pos, neg = scores[labels == 1], scores[labels == 0]
  return ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_evaluation_crop_and_export_scores_agree(dtype, tmp_path):
  config = test_config.get_config()
  config.model.dtype = dtype
  config.eval.train_heatmaps = False
  wd = str(tmp_path / 'run')
  train.train_and_evaluate(config, wd)
  pipe = input_pipeline.create(config)
  pred = predict.Predictor(wd, mode='crop')
  net = run_lib.create_model(config, pipe.info)
  apply = jax.jit(lambda v, x: net.apply(v, x, train=False))
  want = []
  for b in pipe.eval_batches():
    phi = np.asarray(apply(pred.variables, b['image']), np.float64)
    want += list((np.sqrt(phi ** 2 + 1) - 1).mean(axis=(1, 2, 3))[b['valid'] > 0])
  want = np.asarray(want)
  with open(os.path.join(wd, 'results.json')) as f:
    assert _auc(want, pipe.test_labels) == pytest.approx(json.load(f)['image_auc'], abs=1e-9)
  images = list(pipe.test_images)
  got, _ = pred.predict(images)
  print('MEASURE crop', dtype, np.max(np.abs(got - want) / np.abs(want)), flush=True)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # the export (StableHLO, same net and dtype, preprocessing in-graph) against predict on the same images
  assert export.main(['--workdir', wd, '--output', str(tmp_path / 'exp'), '--format', 'stablehlo']) == 0
  exp = jax.export.deserialize(bytearray((tmp_path / 'exp' / 'model.stablehlo').read_bytes()))
  rng = np.random.default_rng(0)
  odd = [rng.integers(0, 256, (50, 40, 3), dtype=np.uint8) for _ in range(3)]   # resized inside the export
  for batch in (np.stack(images[:8]), np.stack(odd)):
    ref, _ = pred.predict(list(batch))
    print('MEASURE', dtype, np.max(np.abs(np.asarray(exp.call(batch)['score']) - ref) / np.abs(ref)), flush=True)
    np.testing.assert_allclose(np.asarray(exp.call(batch)['score']), ref, rtol=EXPORT_RTOL[dtype])

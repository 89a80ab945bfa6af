"""The evaluation of a patch-trained run (`data.patch_size > 0`): the run's net on whole test images at native
resolution (`native_eval`), called by `train.evaluate` in place of the fixed-size evaluation batches."""
from fcdd_jax.models import nets as models
from fcdd_jax.evaluation import native_eval
from fcdd_jax.pipeline import run as run_lib
from fcdd_jax.models import tiling


def scorer(config, variables, normalize, tile=tiling.DEFAULT_TILE):
  """A `native_eval.NativeScorer` of the run's net (evaluation's layers and dtype, any input size)."""
  name = config.model.name
  net = models.create(name, any_size=True, **run_lib.model_options(config))
  return native_eval.NativeScorer(net, variables, models.reception(name), normalize,
                                  gauss_std=config.loss.gauss_std, image_score=config.eval.get('image_score', 'mean'),
                                  tile=tile)


def evaluate(config, pipeline, state, is_main):
  """(outputs, None, results) as `train.evaluate` returns them (no training-set heatmaps in patch mode)."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  outputs, results = native_eval.evaluate(config, pipeline, scorer(config, variables, pipeline.transform.normalize),
                                          verbose=is_main)
  return outputs, None, results

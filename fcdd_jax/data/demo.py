"""The embedded demo dataset (`fcdd_jax.data.demo_data`) as a `Source`: generated textures, defects with exact masks."""
import numpy as np

from fcdd_jax.data import demo_data
from fcdd_jax.data import pollution
from fcdd_jax.data import source
from fcdd_jax.data import streams
from fcdd_jax.data import transforms
from fcdd_jax.utils.errors import ConfigError


def load(config):
  """Demo textures of config.data.demo_* sizes; mean/std from the training images; GT-map loss for
  malformed_normal(_gt) (spec §3.2: the demo has masks). data.pollution = r mixes generated defective textures
  (`demo_data.make_defective`, stream 'pollution') into the training set, unlabelled."""
  d = config.data
  if d.normal_class != 0:
    raise ConfigError(f'config.data.normal_class={d.normal_class} is out of range for the demo (1 class: 0)')
  data = demo_data.make_demo(seed=config.seed, num_train=d.demo_num_train, num_test=d.demo_num_test,
                             size=d.demo_image_size)
  train = data['train_images']
  size = d.demo_image_size
  polluted, record = None, None
  r = pollution.ratio_of(config)
  if r > 0:
    rng = streams.rng(config.seed, 'pollution')
    pool, _, _ = demo_data.make_defective(rng, pollution.num_anomalies(len(train), r), size)
    polluted = pollution.pollute(train, pool, r, seed=rng, what='generated defective textures')
    train = polluted.images
    record = dict(polluted.record(r), source='generated defective textures (demo_data.make_defective)')
  mean, std = transforms.channel_stats(train)
  t = transforms.Transform(mean.astype(np.float32), std.astype(np.float32), input_size=(size, size),
                           raw_size=(size, size), channels=3)
  return source.Source(
      name='demo', class_names=('texture',), normal_class=0, transform=t, train_images=train,
      test_images=data['test_images'], test_labels=data['test_labels'], test_masks=data['test_masks'],
      train_gtmaps=d.supervise_mode in ('malformed_normal', 'malformed_normal_gt'), size_scale=size / 240.0,
      train_is_anomaly=None if polluted is None else polluted.is_anomaly, pollution=record)

"""The embedded demo dataset (`fcdd_jax.demo_data`) as a `Source`: generated textures, defects with exact masks."""
import numpy as np

from fcdd_jax import demo_data
from fcdd_jax.data import source
from fcdd_jax.data import transforms


def load(config):
  """Demo textures of config.data.demo_* sizes; mean/std from the training images; GT-map loss for
  malformed_normal(_gt) (spec §3.2: the demo has masks)."""
  d = config.data
  if d.normal_class != 0:
    raise ValueError(f'config.data.normal_class={d.normal_class} is out of range for the demo (1 class: 0)')
  data = demo_data.make_demo(seed=config.seed, num_train=d.demo_num_train, num_test=d.demo_num_test,
                             size=d.demo_image_size)
  train = data['train_images']
  mean, std = transforms.channel_stats(train)
  size = d.demo_image_size
  t = transforms.Transform(mean.astype(np.float32), std.astype(np.float32), input_size=(size, size),
                           raw_size=(size, size), channels=3)
  return source.Source(
      name='demo', class_names=('texture',), normal_class=0, transform=t, train_images=train,
      test_images=data['test_images'], test_labels=data['test_labels'], test_masks=data['test_masks'],
      train_gtmaps=d.supervise_mode in ('malformed_normal', 'malformed_normal_gt'), size_scale=size / 240.0)

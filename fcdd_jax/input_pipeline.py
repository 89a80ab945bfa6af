"""Input pipelines: deterministic global training stream, padded evaluation batches (spec §5, §6).

Layers (no module imports one above it): `data/transforms` and `data/image_io` (image ops, files, caches) <-
`data/anomalies`, `data/streams`, `data/checks`, `data/tfds_io`, `data/oe` <- one module per dataset, each
returning a `data.source.Source` <- this module: the dataset table, `create`, the `Pipeline`, and `start_global`
(local batches -> global jax arrays, prefetched onto the devices).

`create(config, process_index, process_count)` returns a `Pipeline`. The global training stream is a pure
function of (seed, step): epoch = step // steps_per_epoch picks a permutation of the (enlarged) training
set from (seed, epoch); global row i of step t draws every random choice (online anomaly replacement,
the anomaly, augmentation) from its own stream (seed, t, i) (`data/streams.py`). Each process builds only its
rows [p*b, (p+1)*b) of every global batch, so the stream is the same for any number of devices or hosts and a
resumed run sees exactly the batches of an uninterrupted one. Every epoch sees every (enlarged) training
example once: steps_per_epoch = ceil(n / batch) and the last batch of an epoch, when partial, is padded to the
static batch shape with zero rows and carries `valid` (1 real, 0 padding; only such batches have the key),
which the losses and the BatchNorm statistics honour, as the reference keeps its last partial batch (spec
§7.1, §11.11). Batches are built by a thread pool ahead of time. Evaluation pads the last batch and marks
rows with `valid` instead of dropping examples.

Labels in batches: 0 = nominal ("concentrate"), 1 = anomalous ("push away"), spec §3.6.
"""
import collections
import concurrent.futures
import dataclasses
import os

import jax
import numpy as np

from fcdd_jax.pipeline import config_checks
from fcdd_jax.data import anomalies
from fcdd_jax.data import checks
from fcdd_jax.data import custom
from fcdd_jax.data import custom_native
from fcdd_jax.data import demo
from fcdd_jax.data import imagenet
from fcdd_jax.data import mvtec
from fcdd_jax.data import one_vs_rest
from fcdd_jax.data import patches
from fcdd_jax.data import preview
from fcdd_jax.data import source
from fcdd_jax.data import streams
from fcdd_jax.data import supervision
from fcdd_jax.data import transforms
from fcdd_jax.data import voc

# The dataset table: config.data.name -> fn(config) -> data.source.Source.
LOADERS = {
    'demo': demo.load,
    'custom': custom.load,
    'mvtec': mvtec.load,
    'fmnist': one_vs_rest.load_fmnist,
    'cifar10': one_vs_rest.load_cifar10,
    'imagenet': imagenet.load,
    'pascal_voc': voc.load,
}
DATASETS = tuple(LOADERS)
assert DATASETS == checks.DATASETS, 'data/checks.DATASETS lists the datasets of LOADERS'


@dataclasses.dataclass(frozen=True)
class Info:
  """What the rest of the program knows about the data of a run (shapes, classes, sizes, maps, preprocessing)."""
  name: str
  image_shape: tuple            # (H, W, C) at net input
  num_classes: int
  class_names: tuple
  normal_class: int
  nominal_label: int
  num_train: int                # training examples per epoch (after enlarge)
  steps_per_epoch: int
  train_gtmaps: bool
  test_gtmaps: bool
  num_test: int
  preprocessing: dict = dataclasses.field(default_factory=dict)


def steps_per_epoch(num_train, enlarge, batch_size):
  """ceil(n * enlarge / batch): the last partial batch of an epoch is kept (padded, spec §7.1, §11.11)."""
  return -(-(num_train * max(1, enlarge)) // batch_size)


def load_source(config):
  """The checked `Source` of config.data.name (see LOADERS): read once, it can feed several pipelines (e.g.
  the refinement's models on disjoint subsets of the training set, `Pipeline(train_indices=...)`)."""
  config_checks.check_data(config)
  config_checks.check_patches(config)
  return (custom_native.load if config.data.get('patch_size', 0) else LOADERS[config.data.name])(config)


def create(config, process_index=0, process_count=1):
  """The pipeline of config.data.name (see LOADERS) for process `process_index` of `process_count`."""
  return Pipeline(config, load_source(config), process_index, process_count)


class Pipeline:
  """Training stream and evaluation batches over the decoded uint8 arrays of a `Source`."""

  def __init__(self, config, src, process_index=0, process_count=1, train_indices=None):
    """train_indices: train on these rows of src's training set only (`restrict`; None = all).

    Offline supervision (spec §6.3) replaces the training set by nominal + generated anomalies here; the
    'mvtec' geometry's resize branch takes `src.train_images_input` (spec §5.9); malformed_normal(_gt) draws
    synthetic noise at `src.train_original_sizes` (anomalies.Resampling), as the reference's custom runner."""
    d = config.data
    if train_indices is not None:
      src = source.restrict(src, train_indices)
    self.config = config
    self.train_images = src.train_images
    # data.pollution: which training rows are true anomalies (never a label; for the refinement's precision)
    self.train_is_anomaly = (np.zeros(len(src.train_images), bool) if src.train_is_anomaly is None
                             else np.asarray(src.train_is_anomaly, bool))
    self.pollution = src.pollution
    self.train_images_input = src.train_images_input
    self.train_original_sizes = (None if src.train_original_sizes is None
                                 else np.asarray(src.train_original_sizes, np.int64).reshape(-1, 2))
    self.train_resize = src.train_resize
    # Fixed training labels (0 nominal, 1 anomalous; before nominal_label) and maps: labelled anomalies
    # (`other`) or offline supervision; None = nominal-only images with online replacement (spec §6.3).
    self.train_labels = None if src.train_labels is None else np.asarray(src.train_labels, np.int32)
    self.train_maps = None
    oe_images = src.oe_images
    if not d.online_supervision and d.supervise_mode in checks.GENERATING_MODES:
      self.train_images, self.train_labels, self.train_maps = supervision.offline_supervise(
          config, src.train_images, oe_images, src.size_scale)
      oe_images = None
      extra = len(self.train_images) - len(self.train_is_anomaly)   # the generated (labelled) anomalies
      self.train_is_anomaly = np.concatenate([self.train_is_anomaly, np.zeros(extra, bool)])
    n = len(self.train_images)
    self.patch = int(d.get('patch_size', 0))   # > 0: each sample a random crop of one image (data/patches.py)
    self.pass_index = (patches.pass_indices([im.shape[:2] for im in self.train_images], self.patch, d.enlarge)
                       if self.patch else np.tile(np.arange(n), max(1, int(d.enlarge))))
    # CutPaste and blob self-paste know the pasted region exactly: malformed_normal_gt trains with the GT-map loss
    # on any dataset; data.generated_maps does the same for every generated anomaly (confetti: the pixels it changed)
    generated_maps = d.supervise_mode == 'malformed_normal_gt' and (
        d.noise_mode in anomalies.PASTE_MODES or d.get('generated_maps', False))
    self.info = Info(
        name=src.name, image_shape=src.image_shape, num_classes=len(src.class_names),
        class_names=tuple(src.class_names), normal_class=int(src.normal_class), nominal_label=d.nominal_label,
        num_train=len(self.pass_index), steps_per_epoch=steps_per_epoch(len(self.pass_index), 1, config.batch_size),
        train_gtmaps=bool(src.train_gtmaps or self.train_maps is not None or generated_maps), test_gtmaps=src.test_gtmaps,
        num_test=len(src.test_images), preprocessing=src.transform.describe(src.name, src.normal_class))
    self.test_images = src.test_images
    self.test_labels = np.asarray(src.test_labels, np.int32)
    self.test_masks = src.test_masks
    self._masks_original = src.test_masks_original
    self.transform = src.transform
    self.oe_images = oe_images
    self.oe_masks = src.oe_masks
    self.flip_labels = int(d.nominal_label) == 1   # spec §3.6: nominal class is pushed away
    if self.flip_labels:
      self.test_labels = 1 - self.test_labels
    self.process_index = process_index
    self.process_count = process_count
    self.size_scale = src.size_scale
    self.seed = int(config.seed)
    self.supervise_mode = d.supervise_mode
    self.noise_mode = d.noise_mode
    self.enlarge = max(1, int(d.enlarge))
    self.batch_size = int(config.batch_size)
    if self.batch_size % process_count:
      raise ValueError(f'config.batch_size={self.batch_size} is not divisible by the {process_count} processes')
    self.local_batch = self.batch_size // process_count
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))

  # -- training -------------------------------------------------------------------------------------

  def epoch_order(self, epoch):
    """Source indices of the (enlarged) training set in the order epoch `epoch` visits them."""
    rng = streams.rng(self.seed, 'epoch', epoch)
    return self.pass_index[rng.permutation(len(self.pass_index))]

  def example(self, step, row, src_index):
    """Global row `row` of global step `step` (0-based): (image, label, gtmap)."""
    rng = streams.rng(self.seed, 'example', step, row)
    img = self.train_images[src_index]
    if self.patch:   # the crop first: the anomaly, its map and the augmentation are the crop's own
      img = patches.random_crop(img, None, self.patch, rng)[0]
    geom = None
    if self.train_images_input is not None and self.transform.train_geom == 'mvtec':
      # spec §5.9 (maps): RandomChoice{Resize(raw, NEAREST) -> RandomCrop(input), Resize(input, NEAREST)}, both
      # from the original; the branch is chosen first so that an anomaly is made on the copy it uses
      if rng.random() < 0.5:
        geom = 'crop'
      else:
        img, geom = self.train_images_input[src_index], 'none'
    h, w = img.shape[:2]
    gt = np.zeros((h, w), np.float32)
    label = 0
    mode = self.supervise_mode
    if self.train_labels is not None:       # fixed labels: `other` or offline supervision
      label = int(self.train_labels[src_index])
      gt = self.train_maps[src_index] if self.train_maps is not None else np.full((h, w), label, np.float32)
    elif mode in checks.GENERATING_MODES:
      if self.config.data.exact_half:
        anomalous = (row % 2) == 1
      else:
        anomalous = rng.random() < 0.5          # independent Bernoulli(0.5) per sample (spec §6.3)
      if anomalous:
        oe = oe_mask = None
        if self.oe_images is not None:
          k = rng.integers(len(self.oe_images))
          oe = self.oe_images[k]
          if self.oe_masks is not None and self.noise_mode == 'mvtec_gt':
            oe_mask = self.oe_masks[k]
        res = None
        if (self.train_original_sizes is not None and oe is None and mode != 'noise'
            and self.noise_mode in anomalies.NOISE_MODES):
          res = anomalies.resampling(tuple(self.train_original_sizes[src_index]), self.train_resize, (h, w))
        img, gt = anomalies.make_anomaly(mode, self.noise_mode, rng, img, oe_image=oe, oe_mask=oe_mask,
                                         size_scale=self.size_scale, resampling=res,
                                         gt_min_change=self.config.data.get('gt_min_change', 0))
        label = 1
    if self.flip_labels:
      label = 1 - label
    x, gt = self.transform.train(img, gt, rng, geom)
    return x, label, np.ascontiguousarray(gt, np.float32)

  def train_batch(self, step):
    """This process's rows of the global batch of `step` (0-based), as NumPy arrays."""
    spe = self.info.steps_per_epoch
    epoch, k = divmod(step, spe)
    order = self.epoch_order(epoch)
    rows = range(self.process_index * self.local_batch, (self.process_index + 1) * self.local_batch)
    xs, ys, gs, valid = [], [], [], []
    for row in rows:
      i = k * self.batch_size + row
      if i < len(order):
        x, y, g = self.example(step, row, order[i])
      else:   # padding of the epoch's last, partial batch: zeros, ignored by the loss and BatchNorm
        x = np.zeros(tuple(self.info.image_shape), np.float32)
        y, g = 0, np.zeros(tuple(self.info.image_shape[:2]), np.float32)
      xs.append(x)
      ys.append(y)
      gs.append(g)
      valid.append(i < len(order))
    batch = {'image': np.stack(xs), 'label': np.asarray(ys, np.int32)}
    if self.info.train_gtmaps:
      batch['gtmap'] = np.stack(gs)
    if (k + 1) * self.batch_size > len(order):   # decided globally: every process adds the key
      batch['valid'] = np.asarray(valid, np.float32)
    return batch

  def global_train_batch(self, step):
    """The whole global batch of `step` (testing aid; each process normally builds only its slice)."""
    saved = self.process_index, self.local_batch
    self.process_index, self.local_batch = 0, self.batch_size
    try:
      return self.train_batch(step)
    finally:
      self.process_index, self.local_batch = saved

  def train_batches(self, start_step=0, prefetch=4):
    """Infinite iterator of local training batches for steps start_step, start_step+1, ... (0-based)."""
    futures = []
    step = int(start_step)
    while True:
      while len(futures) < prefetch:
        futures.append(self._pool.submit(self.train_batch, step))
        step += 1
      yield futures.pop(0).result()

  # -- evaluation -----------------------------------------------------------------------------------

  def _split(self, split):
    if split == 'test':
      return self.test_images, self.test_labels, self.test_masks
    if split == 'train':
      n = len(self.train_images)
      labels = np.zeros(n, np.int32) if self.train_labels is None else self.train_labels
      return self.train_images, labels, None
    raise ValueError(f"split={split!r}; allowed: 'test', 'train'")

  def num_eval_batches(self, split='test', batch_size=None):
    gb = int(batch_size or self.config.eval.batch_size or self.batch_size)
    return -(-len(self._split(split)[0]) // gb)

  def eval_batches(self, split='test', batch_size=None):
    images, labels, masks = self._split(split)
    gb = int(batch_size or self.config.eval.batch_size or self.batch_size)
    if gb % self.process_count:
      raise ValueError(f'eval batch size {gb} is not divisible by the {self.process_count} processes')
    lb = gb // self.process_count
    n = len(images)
    num_batches = -(-n // gb)
    def build(b):
      rows = np.arange(b * gb + self.process_index * lb, b * gb + (self.process_index + 1) * lb)
      valid = rows < n
      src = np.where(valid, rows, 0)
      batch = {
          'image': np.stack([self.transform.test(images[i]) for i in src]),
          'label': np.where(valid, labels[src], 0).astype(np.int32),
          'valid': valid.astype(np.float32),
          'index': np.where(valid, rows, -1).astype(np.int32),
      }
      if masks is not None and self.info.test_gtmaps:
        batch['gtmap'] = np.stack([self.transform.test_mask(masks[i]) for i in src]) * valid[:, None, None]
      return batch
    futures = [self._pool.submit(build, b) for b in range(min(num_batches, 4))]
    for b in range(num_batches):
      out = futures.pop(0).result()
      if b + 4 < num_batches:
        futures.append(self._pool.submit(build, b + 4))
      yield out

  def test_masks_original(self):
    if not self.info.test_gtmaps:
      return None
    if self._masks_original is not None:
      return self._masks_original
    return [np.asarray(m, np.uint8) for m in self.test_masks]

  def display_images(self, split, indices):
    """RGB uint8 images at the net's input size (the test geometry), aligned with the heatmaps."""
    images = self._split(split)[0]
    return np.stack([transforms.to_rgb_or_gray(self.transform.test_geometry(images[i]), 3) for i in indices])

  def write_preview(self, path, per_label=20):
    """ds_preview.png (spec §8.3): augmented samples of the first global training batch, per label."""
    preview.write_preview(self.global_train_batch(0), path, per_label)


# ----------------------------------------------------------------------------------------------------
# Local batches -> global arrays on the devices

def to_global(batch, sharding):
  """A dict of this process's NumPy rows -> a dict of global jax.Arrays sharded by `sharding` (every process
  passes its own rows; together they form the global batch)."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def prefetch_to_device(batches, sharding, size=2):
  """Iterator of global arrays (`to_global`) that keeps the next `size` batches on the devices ahead of time,
  so host-to-device transfers overlap compute. Works on any iterable of local batch dicts (training or
  evaluation); ends when `batches` ends."""
  queue = collections.deque()
  for b in batches:
    queue.append(to_global(b, sharding))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def start_global(pipeline, sharding, start_step=0, prefetch=2):
  """The infinite global training stream from step `start_step` (0-based): global jax.Arrays sharded by
  `sharding` (e.g. NamedSharding(mesh, P('data'))), `prefetch` batches ahead on the devices. Each process
  builds only its own rows (`Pipeline.train_batches`)."""
  return prefetch_to_device(pipeline.train_batches(start_step), sharding, prefetch)

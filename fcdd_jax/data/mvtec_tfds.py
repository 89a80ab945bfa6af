"""A tensorflow-datasets builder for MVTec-AD from a manual download (images + masks, official layout).

    builder = mvtec_tfds.MvtecAd(config='bottle', data_dir=DATA_DIR)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=ROOT))
    ds = builder.as_dataset(split='test')

ROOT is the extracted `mvtec_anomaly_detection` directory (`<category>/train/good`, `<category>/test/<defect>`,
`<category>/ground_truth/<defect>/<name>_mask.png`). Examples keep the ORIGINAL resolution (the pipeline
stores them at 240² as the reference and keeps original masks for the pixel AUC). `data.name=mvtec` uses this
builder when `data.tfds_data_dir` is set (prepared once, then read from the tfds cache).
"""
import os

import numpy as np
import tensorflow_datasets as tfds

from fcdd_jax.data import constants

_IMG_EXT = ('.png', '.jpg', '.jpeg', '.bmp')


class MvtecAd(tfds.core.GeneratorBasedBuilder):
  """MVTec-AD, one builder config per category."""
  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download mvtec_anomaly_detection.tar.xz from https://www.mvtec.com/company/research/datasets/mvtec-ad, '
      'extract it, and pass the directory that contains bottle/, cable/, ... as manual_dir '
      '(fcdd_jax: --config.data.root=DIR).')
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=c) for c in constants.MVTEC_CLASSES]

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'mask': tfds.features.Image(shape=(None, None, 1)),
            'label': tfds.features.ClassLabel(names=['good', 'defect']),
            'defect': tfds.features.Text(),
            'filename': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://www.mvtec.com/company/research/datasets/mvtec-ad',
    )

  def _split_generators(self, dl_manager):
    root = os.path.join(str(dl_manager.manual_dir), self.builder_config.name)
    if not os.path.isdir(root):
      raise FileNotFoundError(f'{root} is missing. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    return {'train': self._generate_examples(root, 'train'), 'test': self._generate_examples(root, 'test')}

  def _generate_examples(self, root, split):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    base = os.path.join(root, split)
    for defect in sorted(os.listdir(base)):
      folder = os.path.join(base, defect)
      if not os.path.isdir(folder):
        continue
      for f in sorted(os.listdir(folder)):
        if not f.lower().endswith(_IMG_EXT):
          continue
        path = os.path.join(folder, f)
        with Image.open(path) as im:
          img = np.asarray(im.convert('RGB'))
        mask = np.zeros(img.shape[:2] + (1,), np.uint8)
        if defect != 'good':
          mp = os.path.join(root, 'ground_truth', defect, os.path.splitext(f)[0] + '_mask.png')
          if os.path.exists(mp):
            with Image.open(mp) as m:
              mask = (np.asarray(m.convert('L')) > 0).astype(np.uint8)[..., None] * 255
        yield f'{split}/{defect}/{f}', {'image': img, 'mask': mask, 'label': int(defect != 'good'),
                                        'defect': defect, 'filename': f'{defect}/{f}'}


def load_category(root, category, data_dir):
  """Prepares (once) and reads one category: dict(train, test, labels, masks_orig, defects) at original size."""
  builder = MvtecAd(config=category, data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=root))
  out = {}
  for split in ('train', 'test'):
    imgs, labels, masks, defects, names = [], [], [], [], []
    for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
      imgs.append(ex['image'])
      labels.append(int(ex['label']))
      masks.append((ex['mask'][..., 0] > 0).astype(np.uint8))
      dec = lambda v: v.decode() if isinstance(v, bytes) else str(v)
      defects.append(dec(ex['defect']))
      names.append(dec(ex['filename']))
    order = np.argsort(names, kind='stable')  # the directory reader's order: defect folder, then file
    out[split] = ([imgs[i] for i in order], np.asarray(labels)[order], [masks[i] for i in order],
                  [defects[i] for i in order])
  return out

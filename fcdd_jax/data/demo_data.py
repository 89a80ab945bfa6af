"""Embedded demo dataset: procedurally generated textures with defects and exact masks.

No download, deterministic from the seed. Nominal images are woven-fabric-like textures (two crossed
sinusoidal gratings with a random orientation jitter, phase and tint, plus sensor noise). Test anomalies
carry one defect each - a spot, a scratch, a stain or a hole - whose exact pixel mask is returned. The
training set holds nominal images only: FCDD learns from synthetic anomalies (confetti), never from the
test defects.
"""
import numpy as np

from fcdd_jax.data import streams

DEFECT_TYPES = ('spot', 'scratch', 'stain', 'hole')


def _texture(rng, size):
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  theta = np.deg2rad(rng.uniform(-8.0, 8.0))
  period = rng.uniform(5.5, 6.5)
  u = xx * np.cos(theta) + yy * np.sin(theta)
  v = -xx * np.sin(theta) + yy * np.cos(theta)
  p1, p2 = rng.uniform(0, 2 * np.pi, size=2)
  weave = 0.5 * np.sin(2 * np.pi * u / period + p1) + 0.5 * np.sin(2 * np.pi * v / period + p2)
  base = np.array([150.0, 120.0, 90.0]) + rng.normal(0, 6.0, size=3)
  img = base[None, None, :] + 35.0 * weave[..., None]
  img += rng.normal(0.0, 5.0, size=img.shape)
  return img


def _disc(size, cy, cx, radius):
  yy, xx = np.mgrid[0:size, 0:size]
  return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2


def _defect(rng, img, kind):
  """Applies one defect in place and returns its boolean mask."""
  size = img.shape[0]
  cy, cx = rng.uniform(size * 0.2, size * 0.8, size=2)
  if kind == 'spot':
    mask = _disc(size, cy, cx, rng.uniform(size * 0.06, size * 0.12))
    img[mask] = np.array([40.0, 35.0, 30.0]) + rng.normal(0, 5.0, size=(mask.sum(), 3))
  elif kind == 'scratch':
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(size * 0.3, size * 0.5)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = np.sin(angle), np.cos(angle)
    t = (yy - cy) * dy + (xx - cx) * dx
    d = np.abs(-(yy - cy) * dx + (xx - cx) * dy)
    mask = (np.abs(t) <= length / 2) & (d <= max(1.0, size / 40))
    img[mask] = np.array([235.0, 230.0, 220.0])
  elif kind == 'stain':
    mask = _disc(size, cy, cx, rng.uniform(size * 0.1, size * 0.16))
    img[mask] = img[mask] * np.array([0.6, 1.1, 1.5])
  elif kind == 'hole':
    mask = _disc(size, cy, cx, rng.uniform(size * 0.05, size * 0.09))
    img[mask] = 0.0
  else:
    raise ValueError(f'unknown defect type {kind!r}; known: {DEFECT_TYPES}')
  return mask


def make_defective(rng, num, size=32):
  """`num` defective textures (the kinds of the test anomalies, cycling through DEFECT_TYPES) drawn from the
  np.random.Generator `rng`: (images uint8 [num,S,S,3], masks uint8 [num,S,S] in {0,1}, kinds [num] str).
  Used as the true anomalies of a polluted demo training set (data.pollution)."""
  if size < 16:
    raise ValueError(f'demo image size must be >= 16, got {size}')
  imgs, masks, kinds = [], [], []
  for i in range(int(num)):
    img = _texture(rng, size)
    kind = DEFECT_TYPES[i % len(DEFECT_TYPES)]
    masks.append(_defect(rng, img, kind))
    imgs.append(img)
    kinds.append(kind)
  if not imgs:
    return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8), np.asarray([], str)
  return (np.clip(np.rint(np.stack(imgs)), 0, 255).astype(np.uint8), np.stack(masks).astype(np.uint8),
          np.asarray(kinds))


def make_demo(seed=0, num_train=512, num_test=256, size=32):
  """Returns dict(train_images [N,S,S,3] uint8, test_images [M,S,S,3] uint8, test_labels [M] int32
  (1 = defect), test_masks [M,S,S] uint8 in {0,1}, test_defects [M] str ('good' or the defect type)).

  Half of the test set (rounded down) is defective.
  """
  if size < 16:
    raise ValueError(f'demo image size must be >= 16, got {size}')
  rng = streams.rng(seed, 'demo_data')
  train = np.stack([_texture(rng, size) for _ in range(num_train)]) if num_train else np.zeros((0, size, size, 3))
  test, labels, masks, kinds = [], [], [], []
  num_anomalous = num_test // 2
  for i in range(num_test):
    img = _texture(rng, size)
    mask = np.zeros((size, size), bool)
    kind = 'good'
    if i % 2 == 1 and len(kinds) - kinds.count('good') < num_anomalous:
      kind = DEFECT_TYPES[(i // 2) % len(DEFECT_TYPES)]
      mask = _defect(rng, img, kind)
    test.append(img)
    labels.append(int(kind != 'good'))
    masks.append(mask)
    kinds.append(kind)
  to_u8 = lambda a: np.clip(np.rint(a), 0, 255).astype(np.uint8)
  return dict(
      train_images=to_u8(train),
      test_images=to_u8(np.stack(test)) if test else np.zeros((0, size, size, 3), np.uint8),
      test_labels=np.asarray(labels, np.int32),
      test_masks=np.stack(masks).astype(np.uint8) if masks else np.zeros((0, size, size), np.uint8),
      test_defects=np.asarray(kinds),
  )

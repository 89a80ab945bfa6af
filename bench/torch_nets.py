"""PyTorch versions of FCDD_CNN28_W, FCDD_CNN32_LW3K, FCDD_CNN224_VGG_F and FCDD_CNN224_VGG_NOPT (spec §1.3), the FCDD loss
(spec §3.1) and the reference's transposed-convolution Gaussian upsampler (spec §4), for benchmarks."""
import math

import numpy as np
import torch
from torch import nn


def _bn(c, eps=1e-4):
  return nn.BatchNorm2d(c, eps=eps)


def fcdd_cnn28_w():
  return nn.Sequential(nn.Conv2d(1, 128, 5, 1, 2), _bn(128), nn.LeakyReLU(0.01), nn.MaxPool2d(2, 2),
                       nn.Conv2d(128, 128, 5, 1, 2), nn.MaxPool2d(2, 2), nn.Conv2d(128, 1, 1))


def fcdd_cnn32_lw3k():
  return nn.Sequential(nn.Conv2d(3, 128, 3, 1, 1), _bn(128), nn.LeakyReLU(0.01), nn.MaxPool2d(2, 2),
                       nn.Conv2d(128, 256, 3, 1, 1), _bn(256), nn.LeakyReLU(0.01),
                       nn.Conv2d(256, 256, 3, 1, 1), _bn(256), nn.LeakyReLU(0.01), nn.MaxPool2d(2, 2),
                       nn.Conv2d(256, 128, 3, 1, 1), nn.Conv2d(128, 1, 1))


def fcdd_cnn224_vgg_f(frozen=True):
  layers = []
  cin = 3
  for i, v in enumerate([64, 'M', 128, 'M', 256, 256, 'M', 512, 512]):
    if v == 'M':
      layers.append(nn.MaxPool2d(2, 2))
    else:
      layers += [nn.Conv2d(cin, v, 3, 1, 1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
      cin = v
  features = nn.Sequential(*layers)
  if frozen:
    for p in list(features[:15].parameters()):  # torchvision features[0:15]: convs 1-4 and their BNs
      p.requires_grad = False
  return nn.Sequential(features, nn.Conv2d(512, 1, 1))


def fcdd_cnn224_vgg_nopt():
  """The same VGG11-BN features trained from scratch: every layer trains."""
  return fcdd_cnn224_vgg_f(frozen=False)


NETS = {'FCDD_CNN28_W': (fcdd_cnn28_w, (1, 28, 28)), 'FCDD_CNN32_LW3K': (fcdd_cnn32_lw3k, (3, 32, 32)),
        'FCDD_CNN224_VGG_F': (fcdd_cnn224_vgg_f, (3, 224, 224)),
        'FCDD_CNN224_VGG_NOPT': (fcdd_cnn224_vgg_nopt, (3, 224, 224))}


def fcdd_loss(out, labels):
  a = (torch.sqrt(out ** 2 + 1) - 1).reshape(len(out), -1).mean(1)
  anom = -torch.log(1 - torch.exp(-a) + 1e-31)
  return torch.where(labels == 1, anom, a).mean()


def gauss_window(r, std):
  if r % 2:
    n = np.arange(r)
    return np.exp(-0.5 * ((n - (r - 1) / 2) / std) ** 2)
  g = gauss_window(r - 1, std)
  c = (r - 2) // 2
  return np.insert(g, c + 1, g[c]) / 2


def upsample_transposed(a, r, j, s, H, std):
  """The reference's Algorithm 1: ConvTranspose2d with the 2-D kernel, stride j, output padding, crop."""
  G = np.outer(gauss_window(r, std), gauss_window(r, std))
  h = a.shape[-1]
  op = H - (h - 1) * j - 1 if r % 2 else H - (h - 1) * j - 2
  conv = nn.ConvTranspose2d(1, 1, r, stride=j, padding=0, output_padding=op, bias=False)
  with torch.no_grad():
    conv.weight.copy_(torch.from_numpy(G).float()[None, None])
  pad, si = (r - 1) // 2, int(s)
  def fn(x):
    with torch.no_grad():
      full = conv(x)
      w = full.shape[-1]
      return full[..., pad - si:w - (pad + si), pad - si:w - (pad + si)]
  return fn

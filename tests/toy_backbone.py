"""A backbone written against iai_jax.models.backbones' interface, outside
the package (``model.backbone.name='toy_backbone'``): the test that adding a
backbone is one module plus config keys."""

import flax.linen as nn


class Toy(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x):
    out = {}
    for level, stride in (('c3', 8), ('c4', 16), ('c5', 32)):
      ch = self.width * {'c3': 1, 'c4': 2, 'c5': 4}[level]
      y = nn.avg_pool(x, (stride, stride), (stride, stride))
      out[level] = nn.Conv(ch, (1, 1), name=f'proj_{level}')(y)
    return out


def build(cfg, dtype):
  del dtype
  return Toy(cfg.width)


def channels(cfg):
  return {'c3': cfg.width, 'c4': 2 * cfg.width, 'c5': 4 * cfg.width}


def is_frozen(path, cfg):
  del cfg
  return path[0] == 'proj_c3'  # a frozen part, to see the optimiser skip it


def check(cfg):
  if cfg.width % 8:
    raise ValueError(f'model.backbone.width={cfg.width}: a multiple of 8')


def torch_module(path):
  raise ValueError('the toy backbone has no PyTorch counterpart')

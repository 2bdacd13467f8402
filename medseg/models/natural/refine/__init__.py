"""Natural-image architectures, refine group: importing a module registers its models."""

from medseg.models.natural.refine import dfn as _dfn  # noqa: F401
from medseg.models.natural.refine import fpn as _fpn  # noqa: F401
from medseg.models.natural.refine import frrn as _frrn  # noqa: F401
from medseg.models.natural.refine import gcn as _gcn  # noqa: F401
from medseg.models.natural.refine import hrnetv2_w48 as _hrnetv2_w48  # noqa: F401
from medseg.models.natural.refine import lrr as _lrr  # noqa: F401
from medseg.models.natural.refine import lw_refinenet as _lw_refinenet  # noqa: F401
from medseg.models.natural.refine import ocrnet as _ocrnet  # noqa: F401
from medseg.models.natural.refine import pixelnet as _pixelnet  # noqa: F401
from medseg.models.natural.refine import refinenet as _refinenet  # noqa: F401

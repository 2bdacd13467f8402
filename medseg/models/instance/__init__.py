"""Instance segmentation networks (family ``instance``): separate objects, each with a class and a mask.

Shared parts: :mod:`~medseg.models.instance.base` (the targets/losses/outputs contract),
:mod:`~medseg.models.instance.ops` (boxes, NMS, RoIAlign in torch), :mod:`~medseg.models.instance.targets`,
:mod:`~medseg.models.instance.rcnn` (the two-stage detector's parts) and :mod:`~medseg.models.instance.grouping`
(bottom-up grouping). One import line per architecture below.
"""

from medseg.models.instance import cia_net as _cia_net  # noqa: F401
from medseg.models.instance import mask_rcnn as _mask_rcnn  # noqa: F401
from medseg.models.instance import panet as _panet  # noqa: F401
from medseg.models.instance import pointrend as _pointrend  # noqa: F401

"""Natural-image segmentation architectures (family ``natural``) on :mod:`medseg.models.backbones`.

2D and, where the design allows, 3D. Grouped in folders; each folder's ``__init__`` imports its model files
(one line per architecture).
"""

from medseg.models.natural import attention as _attention  # noqa: F401
from medseg.models.natural import classic as _classic  # noqa: F401
from medseg.models.natural import other as _other  # noqa: F401
from medseg.models.natural import refine as _refine  # noqa: F401

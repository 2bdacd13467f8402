"""Multi-modal fusion architectures (family ``multimodal``): importing a module registers its models.

The input holds two channel groups (e.g. RGB and depth, or two MRI sequences); each group has its own encoder stream
and the streams are fused inside the network.
"""

from medseg.models.multimodal import acnet as _acnet  # noqa: F401
from medseg.models.multimodal import ssma as _ssma  # noqa: F401

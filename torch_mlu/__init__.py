"""torch_mlu: Cambricon's PyTorch extension API, backed by the mlusim simulator.

`import torch_mlu` makes `mlu` a torch device and defines the op a traced MLU model records (so a
saved trace loads); `torch_mlu.core.mlu_model` (imported as `ct`) and `torch_mlu.core.mlu_quantize`
carry the API of Cambricon's scripts.
"""
from torch_mlu.core import traced as _traced
from torch_mlu.core.device import register as _register
from torch_mlu.core.state import SETTINGS as _SETTINGS

_register()
_traced.register(_SETTINGS)
__version__ = "0.1.0+mlusim"

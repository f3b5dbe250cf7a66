"""torch_mlu: Cambricon's PyTorch extension API, backed by the mlusim simulator.

`import torch_mlu` makes `mlu` a torch device; `torch_mlu.core.mlu_model` (imported as `ct`) and
`torch_mlu.core.mlu_quantize` carry the API of Cambricon's scripts.
"""
from torch_mlu.core.device import register as _register

_register()
__version__ = "0.1.0+mlusim"

"""A real `mlu` torch device in pure Python (torch 2.13 CPU build), per shared/torch_mlu_device_notes.md.

PrivateUse1 is renamed to `mlu`; tensors on it are MluTensor, a wrapper subclass holding a CPU
tensor. Every aten op on an MluTensor arrives in `__torch_dispatch__`, below autograd, so backward
and optimizers work unchanged. Ops the simulator runs are routed there by `mlu_model` (whole
quantized models, and the training kernels); everything else computes on the held CPU tensors.
"""
from __future__ import annotations

import threading

import torch
from torch.utils._pytree import tree_map

from mlusim.errors import ShimError
from torch_mlu.core.state import SETTINGS

_lock = threading.Lock()
_registered = False
# aten op -> handler(func, args, kwargs) returning the result or NotImplemented; set by the runtime
OP_HANDLERS: dict = {}
HOST_OP_HOOK = None      # called with each aten op computed on the host (training reports count them)


class _DeviceModule:
    """What `torch.mlu` answers (the device module torch looks up by backend name)."""

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def current_device() -> int:
        return 0

    @staticmethod
    def is_initialized() -> bool:
        return True

    @staticmethod
    def _is_in_bad_fork() -> bool:
        return False

    @staticmethod
    def manual_seed_all(seed: int) -> None:
        """The simulated device draws from the CPU generator, which torch.manual_seed already set."""
        return None

    @staticmethod
    def synchronize(device=None) -> None:
        return None

    @staticmethod
    def get_rng_state(device=None):
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state, device=None) -> None:
        torch.set_rng_state(state)


def _to_cpu_device(x):
    if isinstance(x, torch.device) and x.type == "mlu":
        return torch.device("cpu")
    return x


def _unwrap(x):
    if isinstance(x, MluTensor):
        if x._elem.shape != x.shape and x._elem.numel() == 0:
            _resync(x)
        return x._elem
    return _to_cpu_device(x)


# ---- storages: what torch.jit.save / torch.jit.load reach in C++, below the Python layer ----------
def own_storage(t: "MluTensor") -> "MluTensor":
    """Record `t`'s data (its `_elem`) on its data-less wrapper storage, so that C++ code handed
    only that storage finds the data: torch.jit.save serializes a tensor through its storage, and
    torch.jit.load rebuilds one by pointing a fresh tensor at another's storage. Done for the
    tensors the device makes (factories, `.to('mlu')`) and for detach/alias results (parameters
    are made by detaching), not for every op's output (it costs ~5 us, an op ~40 us)."""
    t.untyped_storage()._mlu_elem = t._elem     # not a weakref to t: swap_tensors refuses those
    return t


_OWNING_OPS = frozenset([torch.ops.aten.detach.default, torch.ops.aten.alias.default])


def _owner_elem(storage):
    return getattr(storage, "_mlu_elem", None)


def _resync(x: "MluTensor") -> None:
    """torch.jit.load sets a tensor's storage, sizes and strides in C++ (no Python op runs), so its
    `_elem` is still the empty tensor it was made with: view the storage owner's data instead.
    (torch.jit.save does the opposite, see _set_storage: a wrapper still sized [0] whose `_elem`
    holds data; that one is left alone.)"""
    elem = _owner_elem(x.untyped_storage())
    if elem is not None and elem is not x._elem:
        x._elem = elem.as_strided(x.shape, x.stride(), x.storage_offset())


def _set_storage(func, args, kwargs):
    """`empty.set_(storage, ...)` on an mlu storage: how torch.jit.save copies a tensor's storage
    to the host. The storage's owner holds the data."""
    self, storage = args[0], args[1]
    if not isinstance(storage, torch.UntypedStorage) or storage.device.type != "mlu":
        return NotImplemented
    elem = _owner_elem(storage)
    if elem is None:
        raise ShimError("torch.jit.save: an mlu tensor of this module was not made by the shim's device (move "
                        "the module to the cpu first, or save its state_dict)")
    offset = args[2] if len(args) > 2 else 0
    size = args[3] if len(args) > 3 else [storage.nbytes() // elem.element_size()]
    stride = args[4] if len(args) > 4 else [1]
    self._elem = torch.empty(0, dtype=self.dtype).set_(elem.untyped_storage(), offset, size, stride)
    return self


class MluTensor(torch.Tensor):
    """A tensor on mlu:0 whose data is the CPU tensor `_elem`."""

    _elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor, requires_grad: bool | None = None):
        r = torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype,
            device=torch.device("mlu", 0), requires_grad=elem.requires_grad if requires_grad is None else requires_grad)
        r._elem = elem
        return r

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = OP_HANDLERS.get(func)
        if handler is not None:
            out = handler(func, args, kwargs)
            if out is not NotImplemented:
                return out
        _check_devices(func, args, kwargs)
        if func in _float_mac_ops() and not getattr(_HOST_FLOAT, "on", False):
            _refuse_float(func)
        if HOST_OP_HOOK is not None:
            HOST_OP_HOOK(func)
        uargs = tree_map(_unwrap, args)
        ukwargs = tree_map(_unwrap, kwargs)
        out = func(*uargs, **ukwargs)
        if func is torch.ops.aten._to_copy.default and _target_is_cpu(kwargs):
            return out
        out = _rewrap(out, args, uargs)
        if func in _OWNING_OPS:       # how parameters are made (Parameter(t) detaches t), also when loaded
            own_storage(out)
        return out

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.tolist:
            return args[0]._elem.tolist()
        if func is torch.Tensor.numpy:
            raise TypeError("can't convert mlu:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
                            "tensor to host memory first.")
        if getattr(func, "__name__", "") == "__set__" and getattr(func, "__self__", None) is torch.Tensor.data:
            with torch._C.DisableTorchFunctionSubclass():
                func(*args, **kwargs)
            new = args[1]
            args[0]._elem = new._elem if isinstance(new, MluTensor) else new
            return None
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    def __repr__(self, *, tensor_contents=None):
        body = repr(self._elem)
        extra = ", device='mlu:0'"
        if self.grad_fn is not None:
            extra += f", grad_fn=<{type(self.grad_fn).__name__}>"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        if body.endswith(")"):
            head = body[:-1]
            head = head.replace(", requires_grad=True", "")
            return head + extra + ")"
        return body

    def __format__(self, spec):
        if self.dim() == 0:
            return self.item().__format__(spec)
        return repr(self)

    def __reduce_ex__(self, proto):
        # rebuildable by torch.load(weights_only=True): no reference to this class in the file
        return (torch._utils._rebuild_device_tensor_from_cpu_tensor,
                (self._elem, self.dtype, str(self.device), self.requires_grad))


_FLOAT_MAC_OPS: frozenset = frozenset()
_HOST_FLOAT = threading.local()


class host_float:
    """Within: float convs/matmuls on mlu tensors run on the host (the compiler's shape
    propagation over a model whose weights sit on the mlu), instead of being refused."""

    def __enter__(self):
        self.prev = getattr(_HOST_FLOAT, "on", False)
        _HOST_FLOAT.on = True

    def __exit__(self, *exc):
        _HOST_FLOAT.on = self.prev


def _float_mac_ops() -> frozenset:
    """The ops that would be the MAC array's work; on float mlu tensors nothing simulates them."""
    global _FLOAT_MAC_OPS
    if not _FLOAT_MAC_OPS:
        a = torch.ops.aten
        _FLOAT_MAC_OPS = frozenset([a.convolution.default, a.addmm.default, a.mm.default, a.bmm.default,
                                    a.baddbmm.default, a.linear.default, a.conv2d.default])
    return _FLOAT_MAC_OPS


def _refuse_float(func) -> None:
    """A float model on the mlu: the MLU270 runs quantized convs and matmuls (its MAC array takes int8
    and int16), and running them on the host instead would give a report-less, timing-less answer
    that looks like an MLU run. Say so, and leave no stale report behind."""
    SETTINGS.last_report = None
    raise ShimError(f"{func} on mlu tensors of a float model: the MLU runs quantized models; wrap the model with "
                    f"mlu_quantize.quantize_dynamic_mlu(model, ...) (calibrated on CPU batches) before moving it "
                    f"to ct.mlu_device(), or use adaptive_quantize for training")


def _target_is_cpu(kwargs) -> bool:
    d = kwargs.get("device")
    return d is not None and torch.device(d).type == "cpu"


def _check_devices(func, args, kwargs) -> None:
    """Like a real accelerator: mixing mlu and non-scalar cpu tensors in one op is an error."""
    if func in (torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default):
        return
    cpu = []

    def look(x):
        if isinstance(x, torch.Tensor) and not isinstance(x, MluTensor) and x.dim() > 0 and x.device.type == "cpu":
            cpu.append(x)
        return x

    tree_map(look, (args, kwargs))
    if cpu:
        raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                           f"mlu:0 and cpu! (when checking arguments for {func})")


def _rewrap(out, args, uargs):
    """Outputs that are an unwrapped input (in-place ops) go back to that input's wrapper."""
    ids = {}
    for a, u in zip(_flat(args), _flat(uargs)):
        if isinstance(a, MluTensor):
            ids[id(u)] = a

    def wrap(x):
        if isinstance(x, torch.Tensor) and not isinstance(x, MluTensor):
            same = ids.get(id(x))
            return same if same is not None else MluTensor(x)
        return x

    return tree_map(wrap, out)


def _flat(tree):
    from torch.utils._pytree import tree_flatten

    return tree_flatten(tree)[0]


# ---- PrivateUse1 kernels: the few ops that run before any MluTensor exists -------------------------
def _empty_strided(size, stride, dtype=None, layout=None, device=None, pin_memory=None):
    return own_storage(MluTensor(torch.empty_strided(size, stride, dtype=dtype or torch.get_default_dtype())))


def _empty_memory_format(size, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return own_storage(MluTensor(torch.empty(size, dtype=dtype or torch.get_default_dtype(),
                                             memory_format=memory_format or torch.contiguous_format)))


def _copy_from(src, dst, non_blocking=False):
    s = src._elem if isinstance(src, MluTensor) else src
    if isinstance(dst, MluTensor):
        dst._elem.copy_(s)
    else:
        dst.copy_(s)
    return dst


_LIB = None


def register() -> None:
    """Make `mlu` a torch device (idempotent; must run before any mlu tensor is made)."""
    global _registered, _LIB
    with _lock:
        if _registered:
            return
        if torch._C._get_privateuse1_backend_name() != "mlu":
            from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

            _setup_privateuseone_for_python_backend("mlu", backend_module=_DeviceModule)
        _LIB = torch.library.Library("aten", "IMPL")
        _LIB.impl("empty_strided", _empty_strided, "PrivateUse1")
        _LIB.impl("empty.memory_format", _empty_memory_format, "PrivateUse1")
        _LIB.impl("_copy_from", _copy_from, "PrivateUse1")
        torch.__future__.set_swap_module_params_on_conversion(True)
        torch.autograd.set_multithreading_enabled(False)
        OP_HANDLERS[torch.ops.aten.set_.source_Storage_storage_offset] = _set_storage
        OP_HANDLERS[torch.ops.aten.set_.source_Storage] = _set_storage
        _registered = True


def to_mlu(t: torch.Tensor) -> MluTensor:
    return t if isinstance(t, MluTensor) else MluTensor(t.detach().cpu().contiguous())


def cpu_of(t: torch.Tensor) -> torch.Tensor:
    return t._elem if isinstance(t, MluTensor) else t

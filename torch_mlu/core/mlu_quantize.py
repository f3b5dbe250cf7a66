"""`torch_mlu.core.mlu_quantize`: Cambricon's quantization entry points.

`quantize_dynamic_mlu(model, qconfig, dtype='int8', gen_quant=True)` returns a copy of the model
whose CPU forward calibrates (min/max of every tensor, over `iteration` batches) and whose
state_dict carries the calibration (`mlu_absmax`, `mlu_calib_count`). `gen_quant=False` builds the
same model ready to load those scales. Moved to `ct.mlu_device()`, the model runs quantized on the
simulator (see runtime.py) under the settings `ct` made (torch_mlu.core.state.SETTINGS). The
scheme is Cambricon's: symmetric, power-of-two position plus scale, int8 or int16, optional
per-channel weights, mean/std folded into the first conv (`firstconv`).
"""
from __future__ import annotations

import copy

import torch

from mlusim.errors import ShimError
from torch_mlu.core import adaptive_training, compiled, runtime
from torch_mlu.core.device import MluTensor
from torch_mlu.core.state import SETTINGS, TRAINING

DEFAULT_QCONFIG = {"iteration": 1, "use_avg": False, "data_scale": 1.0, "mean": None, "std": None,
                   "firstconv": True, "per_channel": False, "method": "minmax"}
# what a quantized state_dict records besides the calibration (its `_extra_state`)
SAVED_KEYS = ("data_scale", "mean", "std", "firstconv", "per_channel", "use_avg", "iteration")
STATE_FORMAT = "mlusim-quant-1"


class MLUQuantizedModel:
    """Mixed into a quantized model's class (ahead of the user's class) by quantize_dynamic_mlu."""

    def forward(self, x, *args, **kwargs):
        orig = self._mlu_orig_cls
        if isinstance(x, MluTensor):
            if args or kwargs:
                raise ShimError("MLU models take a single input tensor")
            return runtime.mlu_forward(self, orig, x, SETTINGS)
        if self._mlu_gen_quant and not torch.jit.is_tracing() and \
                int(self.mlu_calib_count.item()) < int(self._mlu_qconfig["iteration"]):
            with torch.no_grad():
                compiled.calibrate(self, orig, x)
        return orig.forward(self, self._mlu_normalize(x), *args, **kwargs)

    def _mlu_normalize(self, x):
        """On the CPU, the normalization the MLU folds into its first conv is applied explicitly."""
        q = self._mlu_qconfig
        if not q.get("firstconv") or (q.get("mean") is None and q.get("std") is None):
            return x
        c = x.shape[1]
        for k in ("mean", "std"):
            if q.get(k) is not None and len(q[k]) not in (1, c):
                raise ShimError(f"qconfig {k} has {len(q[k])} values but the input has {c} channels")
        mean = torch.as_tensor(q.get("mean") or [0.0] * c, dtype=x.dtype).reshape(1, -1, 1, 1)
        std = torch.as_tensor(q.get("std") or [1.0] * c, dtype=x.dtype).reshape(1, -1, 1, 1)
        return (x - mean) / std

    def get_extra_state(self) -> dict:
        """Every setting the quantized model depends on, saved beside the calibration, so that
        `quantize_dynamic_mlu(net)` + `load_state_dict` in another process rebuilds the same model:
        plain types only (torch.load(weights_only=True) reads them)."""
        q = self._mlu_qconfig
        return {"format": STATE_FORMAT, "dtype": self._mlu_dtype, "mixed_layer": dict(self._mlu_mixed),
                **{k: (list(q[k]) if isinstance(q[k], tuple) else q[k]) for k in SAVED_KEYS}}

    def set_extra_state(self, state) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ShimError(f"{type(self).__name__}.load_state_dict: the MLU settings in this state_dict are not "
                            f"mlusim's (format {state.get('format') if isinstance(state, dict) else type(state).__name__})")
        dtype = state.get("dtype")
        if dtype not in ("int8", "int16"):
            raise ShimError(f"{type(self).__name__}.load_state_dict: saved dtype {dtype!r} is not int8 or int16")
        q = _check_qconfig({k: state[k] for k in SAVED_KEYS if k in state})
        self._mlu_qconfig = {**self._mlu_qconfig, **{k: q[k] for k in SAVED_KEYS}}
        self._mlu_dtype = dtype
        self._mlu_mixed = _check_mixed(state.get("mixed_layer") or {})
        self.__dict__.pop("_mlu_compiled", None)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """A state_dict with calibration but without the settings (saved by an older mlusim) is
        refused, unless strict=False: then this model's own settings are used (documented default)."""
        if "mlu_absmax" in state_dict and "_extra_state" not in state_dict and strict:
            raise ShimError(f"{type(self).__name__}.load_state_dict: the state_dict has MLU calibration but not the "
                            f"settings it was made with (dtype, per_channel, mean/std, mixed layers); re-save it "
                            f"with this mlusim, or pass strict=False to use this model's own settings")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "mlu_absmax"
        if key in state_dict and state_dict[key].shape != self.mlu_absmax.shape:
            self.mlu_absmax = torch.zeros_like(state_dict[key], device=self.mlu_absmax.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _check_qconfig(spec) -> dict:
    q = dict(DEFAULT_QCONFIG)
    if spec is None:
        return q
    if not isinstance(spec, dict):
        raise ShimError(f"qconfig_spec must be a dict of Cambricon's keys, got {type(spec).__name__}")
    unknown = set(spec) - set(DEFAULT_QCONFIG)
    if unknown:
        raise ShimError(f"qconfig_spec: unknown key(s) {', '.join(sorted(unknown))} "
                        f"(known: {', '.join(DEFAULT_QCONFIG)})")
    q.update(spec)
    if q["method"] != "minmax":
        raise ShimError(f"qconfig_spec: method {q['method']!r} is not supported (minmax)")
    if not isinstance(q["iteration"], int) or q["iteration"] < 1:
        raise ShimError("qconfig_spec: iteration must be a positive integer")
    for k in ("mean", "std"):
        if q[k] is not None and not (isinstance(q[k], (list, tuple)) and all(isinstance(v, (int, float)) for v in q[k])):
            raise ShimError(f"qconfig_spec: {k} must be a list of numbers")
    if q["std"] is not None and any(v == 0 for v in q["std"]):
        raise ShimError("qconfig_spec: std must not contain zeros")
    if q["mean"] is not None and q["std"] is not None and len(q["mean"]) != len(q["std"]) \
            and 1 not in (len(q["mean"]), len(q["std"])):
        raise ShimError(f"qconfig_spec: mean has {len(q['mean'])} values and std {len(q['std'])}; give one per "
                        f"input channel (or one for all)")
    ds = q["data_scale"]
    if isinstance(ds, bool) or not isinstance(ds, (int, float)) or not 0 < ds < float("inf"):
        raise ShimError(f"qconfig_spec: data_scale must be a positive number, got {ds!r}")
    return q


def _check_mixed(mixed_layer) -> dict:
    mixed = {}
    for names, dt in (mixed_layer or {}).items():
        if dt not in ("int8", "int16"):
            raise ShimError(f"mixed_layer: {names!r} -> {dt!r}: only 'int8' and 'int16' are supported")
        for n in names.split(","):
            mixed[n.strip()] = dt
    return mixed


def quantize_dynamic_mlu(model, qconfig_spec=None, dtype=None, mapping=None, inplace=False, gen_quant=False,
                         mixed_layer=None):
    """Cambricon's signature. `mapping` is accepted and ignored: the MLU handles Conv2d/Linear and
    the ops around them itself."""
    if not isinstance(model, torch.nn.Module):
        raise ShimError(f"quantize_dynamic_mlu expects an nn.Module, got {type(model).__name__}")
    dtype = dtype or "int8"
    if dtype not in ("int8", "int16"):
        raise ShimError(f"quantize_dynamic_mlu: dtype must be 'int8' or 'int16', got {dtype!r}")
    q = _check_qconfig(qconfig_spec)
    mixed = _check_mixed(mixed_layer)
    m = model if inplace else copy.deepcopy(model)
    orig = type(m)
    if isinstance(m, MLUQuantizedModel):
        orig = m._mlu_orig_cls
    else:
        m.__class__ = type(f"MLUQuantized{orig.__name__}", (MLUQuantizedModel, orig), {})
    m._mlu_orig_cls = orig
    m._mlu_qconfig = q
    m._mlu_dtype = dtype
    m._mlu_mixed = mixed
    m._mlu_gen_quant = bool(gen_quant)
    m.__dict__.pop("_mlu_compiled", None)
    device = next((p.device for p in m.parameters()), torch.device("cpu"))
    m.register_buffer("mlu_absmax", torch.zeros(0, dtype=torch.float64, device=device))
    m.register_buffer("mlu_calib_count", torch.tensor(0, device=device))
    return m


def adaptive_quantize(model, steps_per_epoch, bitwidth=8, inplace=True, quantify_rate=0.01):
    """Cambricon's training-time quantization: conv and linear (forward and backward) run on the MLU's
    MAC array with operands quantized to `bitwidth` bits: 8 or 16 (an 8-bit site widens to 16 where it
    loses more than `quantify_rate`, relative L2 error), or 31 (each operand split into int16 digits,
    several MAC passes added in float). Positions follow each tensor's range every step."""
    if not isinstance(model, torch.nn.Module):
        raise ShimError(f"adaptive_quantize expects an nn.Module, got {type(model).__name__}")
    if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ShimError("adaptive_quantize: steps_per_epoch must be a positive integer")
    if SETTINGS.cnml_enabled:
        raise ShimError("adaptive_quantize: training runs on Cambricon's CNNL path; call "
                        "ct.set_cnml_enabled(False) first, as the training scripts do")
    adaptive_training.enable(SETTINGS, TRAINING, int(bitwidth), steps_per_epoch, quantify_rate)
    model._mlu_adaptive = {"bitwidth": int(bitwidth), "steps_per_epoch": steps_per_epoch}
    return model

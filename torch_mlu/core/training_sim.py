"""What every training kernel shares: running one simulator program and charging its cycles to
the current optimizer step, and moving tensors between torch and numpy.

The kernels (the MAC-array side in adaptive_training, the vector side in training_ops) receive a
TrainCtx as their first argument: adaptive_training binds it when training is switched on, so no
kernel reads a global.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from torch_mlu.core.device import MluTensor, cpu_of
from torch_mlu.core.state import DeviceSettings, TrainState


@dataclass
class TrainCtx:
    """The device settings the kernels run under and the training bookkeeping they add to."""

    settings: DeviceSettings
    train: TrainState

    @property
    def cfg(self):
        return self.settings.config()

    def run(self, program, inputs: dict, phase: str) -> dict:
        """Simulate `program` on the configured cores; its cycles and kernel count go to `phase`
        ('forward', 'backward' or 'update') of the current step."""
        from mlusim.sim import simulate

        res = simulate(program, self.cfg, cores=self.settings.core_number, inputs=inputs)
        self.train.step[phase] += res.cycles
        self.train.step[f"{phase}_kernels"] += len(program.kernels)
        return res.outputs


def host_array(t) -> np.ndarray:
    """A tensor's values as a contiguous float32 numpy array (the simulator's input)."""
    return np.ascontiguousarray(cpu_of(t).detach().float().numpy())


def mlu_tensor(a: np.ndarray, shape=None) -> torch.Tensor:
    """A simulator output as an mlu tensor (float32), reshaped if asked."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return MluTensor(t.reshape(shape) if shape is not None else t)


def sym_pad(p) -> int | None:
    """The padding if it is the same on every side, else None (the kernels take one pad)."""
    p = list(p)
    return p[0] if len(set(p)) == 1 else None

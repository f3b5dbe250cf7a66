"""mlusim's model zoo written as torch modules (torchvision-style code), and a loader that copies
the zoo's seeded weights into them, so a torch model and `mlusim compile --model NAME` are the same
network with the same numbers.

    net = torch_mlu.models.build("resnet18")          # weights of mlusim's zoo, seed 0
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mlusim.errors import ShimError


class MnistNet(nn.Module):
    """The seed document's Net."""

    def __init__(self, res: int = 28):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout2d(0.25)
        self.dropout2 = nn.Dropout(0.5)
        side = (res - 4) // 2
        self.fc1 = nn.Linear(64 * side * side, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.dropout1(F.max_pool2d(x, 2))
        x = self.dropout2(F.relu(self.fc1(torch.flatten(x, 1))))
        return F.log_softmax(self.fc2(x), dim=1)


class LeNet5(nn.Module):
    def __init__(self, res: int = 28):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        side = ((res // 2) - 4) // 2
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _cbr(ci, co, k, stride=1, padding=0, groups=1):
    return nn.Sequential(nn.Conv2d(ci, co, k, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(co))


class BasicBlock(nn.Module):
    def __init__(self, ci, co, stride):
        super().__init__()
        self.conv1, self.conv2 = _cbr(ci, co, 3, stride, 1), _cbr(co, co, 3, 1, 1)
        self.down = _cbr(ci, co, 1, stride) if stride != 1 or ci != co else None

    def forward(self, x):
        y = self.conv2(F.relu(self.conv1(x)))
        return F.relu(y + (self.down(x) if self.down is not None else x))


class Bottleneck(nn.Module):
    def __init__(self, ci, width, stride):
        super().__init__()
        co = width * 4
        self.conv1, self.conv2 = _cbr(ci, width, 1), _cbr(width, width, 3, stride, 1)
        self.conv3 = _cbr(width, co, 1)
        self.down = _cbr(ci, co, 1, stride) if stride != 1 or ci != co else None

    def forward(self, x):
        y = self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))
        return F.relu(y + (self.down(x) if self.down is not None else x))


class ResNet(nn.Module):
    def __init__(self, block, layers, expansion):
        super().__init__()
        self.stem = _cbr(3, 64, 7, 2, 3)
        blocks, ci = [], 64
        for i, (n, width) in enumerate(zip(layers, (64, 128, 256, 512))):
            for j in range(n):
                blocks.append(block(ci, width, 2 if (j == 0 and i > 0) else 1))
                ci = width * expansion
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512 * expansion, 1000)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2, 1)
        x = F.adaptive_avg_pool2d(self.blocks(x), 1)
        return self.fc(torch.flatten(x, 1))


class InvertedResidual(nn.Module):
    def __init__(self, ci, co, stride, t):
        super().__init__()
        mid = ci * t
        self.expand = _cbr(ci, mid, 1) if t != 1 else None
        self.dw = _cbr(mid, mid, 3, stride, 1, groups=mid)
        self.project = _cbr(mid, co, 1)
        self.residual = stride == 1 and ci == co

    def forward(self, x):
        y = F.relu6(self.expand(x)) if self.expand is not None else x
        y = self.project(F.relu6(self.dw(y)))
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = _cbr(3, 32, 3, 2, 1)
        blocks, ci = [], 32
        for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                           (6, 160, 3, 2), (6, 320, 1, 1)]:
            for j in range(n):
                blocks.append(InvertedResidual(ci, c, s if j == 0 else 1, t))
                ci = c
        self.blocks = nn.Sequential(*blocks)
        self.head = _cbr(320, 1280, 1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

    def forward(self, x):
        x = self.blocks(F.relu6(self.stem(x)))
        x = F.adaptive_avg_pool2d(F.relu6(self.head(x)), 1)
        return self.classifier(torch.flatten(x, 1))


class VGG16(nn.Module):
    def __init__(self, res: int = 224):
        super().__init__()
        layers, ci = [], 3
        for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(ci, v, 3, padding=1), nn.ReLU()]
                ci = v
        self.features = nn.Sequential(*layers)
        side = res // 32
        self.classifier = nn.Sequential(nn.Linear(512 * side * side, 4096), nn.ReLU(), nn.Dropout(),
                                        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 1000))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def _module(name: str, res: int) -> nn.Module:
    if name == "mnist":
        return MnistNet(res)
    if name == "lenet5":
        return LeNet5(res)
    if name == "resnet18":
        return ResNet(BasicBlock, [2, 2, 2, 2], 1)
    if name == "resnet50":
        return ResNet(Bottleneck, [3, 4, 6, 3], 4)
    if name == "mobilenetv2":
        return MobileNetV2()
    if name == "vgg16":
        return VGG16(res)
    raise ShimError(f"no torch definition of model '{name}'")


def load_zoo_weights(module: nn.Module, graph) -> nn.Module:
    """Copy an mlusim zoo graph's parameters into the module, matching convs, batch norms and
    linears in execution order (both are written in the same order)."""
    from mlusim.compiler.frontend_torch import from_torch  # noqa: F401 - same tracing rules

    mods = [m for m in _execution_order(module, graph.input.shape) if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    nodes = [n for n in graph.nodes if n.op in ("conv2d", "batchnorm", "linear")]
    if len(mods) != len(nodes):
        raise ShimError(f"{type(module).__name__} has {len(mods)} parametrized layers, the zoo graph {len(nodes)}")
    with torch.no_grad():
        for m, n in zip(mods, nodes):
            if isinstance(m, nn.BatchNorm2d):
                for attr, key in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "mean"), ("running_var", "var")):
                    getattr(m, attr).copy_(torch.from_numpy(n.params[key]))
                m.eps = n.attrs.get("eps", 1e-5)
                continue
            if tuple(m.weight.shape) != n.params["weight"].shape:
                raise ShimError(f"{type(m).__name__} {tuple(m.weight.shape)} != zoo node '{n.name}' "
                                f"{n.params['weight'].shape}")
            m.weight.copy_(torch.from_numpy(np.ascontiguousarray(n.params["weight"])))
            if m.bias is not None:
                m.bias.copy_(torch.from_numpy(n.params["bias"]))
    return module


def _execution_order(module: nn.Module, shape) -> list[nn.Module]:
    order: list[nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda m, a: order.append(m)) for m in module.modules()]
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(shape))
    finally:
        for h in hooks:
            h.remove()
    return order


def build(name: str, batch: int = 1, resolution: int | None = None, seed: int = 0) -> nn.Module:
    """The torch version of zoo model `name` carrying the zoo's seeded weights, in eval mode."""
    from mlusim.compiler.zoo import build as zoo_build

    g = zoo_build(name, batch, resolution, seed)
    return load_zoo_weights(_module(name, g.input.shape[2]), g).eval()

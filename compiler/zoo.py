"""Built-in models, written like their torch/torchvision definitions, with seeded random weights.

No downloads: weights are He-initialised from a seed, batch norms get small random statistics, so
activations have realistic ranges for calibration. Any batch size; any input resolution the
architecture admits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mlusim.errors import CompileError
from mlusim.compiler import zoo_classify as zc
from mlusim.compiler import zoo_detect as zd
from mlusim.compiler.graph import Builder, Graph
from mlusim.compiler.weights import Seed
from mlusim.compiler.zoo_layers import conv_bn


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[[int, int, Seed], Graph]
    channels: int
    resolution: int
    description: str
    min_resolution: int = 32


def mnist(batch: int, res: int, seed: Seed) -> Graph:
    """The seed document's MNIST net (conv-conv-pool-fc-fc, log_softmax)."""
    b = Builder("mnist", seed)
    x = b.input((batch, 1, res, res))
    x = b.unary("relu", b.conv(x, 32, 3, name="conv1"))
    x = b.unary("relu", b.conv(x, 64, 3, name="conv2"))
    x = b.unary("maxpool", x, kernel=2)
    x = b.unary("dropout", x, p=0.25, name="dropout1")
    x = b.unary("flatten", x)
    side = (res - 4) // 2
    x = b.unary("relu", b.linear(x, 64 * side * side, 128, name="fc1"))
    x = b.unary("dropout", x, p=0.5, name="dropout2")
    x = b.linear(x, 128, 10, name="fc2")
    return b.graph(b.unary("log_softmax", x, dim=1), batch=batch)


def lenet5(batch: int, res: int, seed: Seed) -> Graph:
    b = Builder("lenet5", seed)
    x = b.input((batch, 1, res, res))
    x = b.unary("maxpool", b.unary("relu", b.conv(x, 6, 5, padding=2, name="conv1")), kernel=2)
    x = b.unary("maxpool", b.unary("relu", b.conv(x, 16, 5, name="conv2")), kernel=2)
    side = ((res // 2) - 4) // 2
    x = b.unary("flatten", x)
    x = b.unary("relu", b.linear(x, 16 * side * side, 120, name="fc1"))
    x = b.unary("relu", b.linear(x, 120, 84, name="fc2"))
    return b.graph(b.linear(x, 84, 10, name="fc3"), batch=batch)


def _basic(b: Builder, x: str, co: int, stride: int, name: str) -> str:
    ci = b.channels(x)
    y = conv_bn(b, x, co, 3, stride, 1, name=f"{name}.1")
    y = conv_bn(b, y, co, 3, 1, 1, act=None, name=f"{name}.2")
    sc = conv_bn(b, x, co, 1, stride, act=None, name=f"{name}.down") if stride != 1 or ci != co else x
    return b.unary("relu", b.binary("add", y, sc, name=f"{name}.add"))


def _bottleneck(b: Builder, x: str, width: int, stride: int, name: str) -> str:
    ci, co = b.channels(x), width * 4
    y = conv_bn(b, x, width, 1, name=f"{name}.1")
    y = conv_bn(b, y, width, 3, stride, 1, name=f"{name}.2")
    y = conv_bn(b, y, co, 1, act=None, name=f"{name}.3")
    sc = conv_bn(b, x, co, 1, stride, act=None, name=f"{name}.down") if stride != 1 or ci != co else x
    return b.unary("relu", b.binary("add", y, sc, name=f"{name}.add"))


def _resnet(name: str, block, layers: list[int], expansion: int):
    def build(batch: int, res: int, seed: Seed) -> Graph:
        b = Builder(name, seed)
        x = b.input((batch, 3, res, res))
        x = conv_bn(b, x, 64, 7, 2, 3, name="stem")
        x = b.unary("maxpool", x, kernel=3, stride=2, padding=1)
        for i, (n, width) in enumerate(zip(layers, (64, 128, 256, 512))):
            for j in range(n):
                x = block(b, x, width, 2 if (j == 0 and i > 0) else 1, f"layer{i + 1}.{j}")
        x = b.unary("flatten", b.unary("gap", x))
        return b.graph(b.linear(x, 512 * expansion, 1000, name="fc"), batch=batch)
    return build


def mobilenetv2(batch: int, res: int, seed: Seed) -> Graph:
    b = Builder("mobilenetv2", seed)
    x = b.input((batch, 3, res, res))
    x = conv_bn(b, x, 32, 3, 2, 1, act="relu6", name="stem")
    for i, (t, c, n, s) in enumerate([(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                      (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]):
        for j in range(n):
            stride, ci = (s if j == 0 else 1), b.channels(x)
            name = f"block{i}.{j}"
            y = conv_bn(b, x, ci * t, 1, act="relu6", name=f"{name}.expand") if t != 1 else x
            y = conv_bn(b, y, ci * t, 3, stride, 1, groups=ci * t, act="relu6", name=f"{name}.dw")
            y = conv_bn(b, y, c, 1, act=None, name=f"{name}.project")
            x = b.binary("add", x, y, name=f"{name}.add") if stride == 1 and ci == c else y
    x = conv_bn(b, x, 1280, 1, act="relu6", name="head")
    x = b.unary("flatten", b.unary("gap", x))
    x = b.unary("dropout", x, p=0.2)
    return b.graph(b.linear(x, 1280, 1000, name="classifier"), batch=batch)


def vgg16(batch: int, res: int, seed: Seed) -> Graph:
    b = Builder("vgg16", seed)
    x = b.input((batch, 3, res, res))
    side = res
    for i, v in enumerate([64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                           512, 512, 512, "M"]):
        if v == "M":
            x = b.unary("maxpool", x, kernel=2)
            side //= 2
        else:
            x = b.unary("relu", b.conv(x, v, 3, padding=1, name=f"features.{i}"))
    x = b.unary("flatten", x)
    x = b.unary("dropout", b.unary("relu", b.linear(x, 512 * side * side, 4096, name="fc1")), p=0.5)
    x = b.unary("dropout", b.unary("relu", b.linear(x, 4096, 4096, name="fc2")), p=0.5)
    return b.graph(b.linear(x, 4096, 1000, name="fc3"), batch=batch)


ZOO: dict[str, ZooEntry] = {e.name: e for e in (
    ZooEntry("mnist", mnist, 1, 28, "the seed document's MNIST net: 2 conv, max pool, 2 fc, log_softmax", 6),
    ZooEntry("lenet5", lenet5, 1, 28, "LeNet-5 (ReLU, max pool)", 16),
    ZooEntry("resnet18", _resnet("resnet18", _basic, [2, 2, 2, 2], 1), 3, 224, "ResNet-18 (torchvision)"),
    ZooEntry("resnet50", _resnet("resnet50", _bottleneck, [3, 4, 6, 3], 4), 3, 224, "ResNet-50 (torchvision)"),
    ZooEntry("mobilenetv2", mobilenetv2, 3, 224, "MobileNetV2 (torchvision, depthwise convs)"),
    ZooEntry("vgg16", vgg16, 3, 224, "VGG-16 (torchvision, without the adaptive pool)"),
    ZooEntry("alexnet_bn", zc.alexnet_bn, 3, 227, "AlexNet with batch norms (cvjena AlexNet_cvgj, Caffe), softmax", 67),
    ZooEntry("squeezenet1_0", zc.squeezenet("1.0"), 3, 227, "SqueezeNet 1.0 (Caffe; fire modules, concat)", 35),
    ZooEntry("squeezenet1_1", zc.squeezenet("1.1"), 3, 227, "SqueezeNet 1.1 (Caffe; fire modules, concat)", 35),
    ZooEntry("resnext50_32x4d", zc.resnext50_32x4d, 3, 224, "ResNeXt-50 32x4d (Caffe/torchvision; grouped convs)"),
    ZooEntry("se_resnet50", zc.se_resnet50, 3, 224, "SE-ResNet-50 (Caffe SENet; squeeze-excitation, sigmoid)"),
    ZooEntry("mobilenetv3_large", zc.mobilenetv3("mobilenetv3_large", zc.V3_LARGE, 960, 1280), 3, 224,
             "MobileNetV3-Large (torchvision; hardswish, SE with hardsigmoid)"),
    ZooEntry("mobilenetv3_small", zc.mobilenetv3("mobilenetv3_small", zc.V3_SMALL, 576, 1024), 3, 224,
             "MobileNetV3-Small (torchvision; hardswish, SE with hardsigmoid)"),
    ZooEntry("yolov3_tiny", zd.yolov3_tiny, 3, 416, "YOLOv3-tiny (darknet cfg; leaky ReLU, upsample, 2 outputs)", 64),
    ZooEntry("mobilenet_ssd", zd.mobilenet_ssd, 3, 300, "MobileNet-SSD (Caffe, VOC; depthwise, 12 head outputs)"),
    ZooEntry("yolov3", zd.yolov3, 3, 416, "YOLOv3 (darknet cfg; Darknet-53, 3 outputs)", 64),
)}


def unknown_model(name: str) -> CompileError:
    """'unknown model' with the closest zoo names: a typo should not need the whole list read."""
    import difflib

    close = difflib.get_close_matches(name.lower(), list(ZOO), n=2, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return CompileError(f"unknown model '{name}' ({hint}zoo: {', '.join(ZOO)})")


def build(name: str, batch: int = 1, resolution: int | None = None, seed: int = 0, values: bool = True) -> Graph:
    """Zoo model `name` at `batch` and `resolution` (default: the model's) with weights drawn from
    `seed`; values=False: no weights drawn, each a Placeholder of its shape (a shape-only compile)."""
    entry = ZOO.get(name.lower())
    if entry is None:
        raise unknown_model(name)
    if batch < 1:
        raise CompileError(f"--batch must be >= 1, got {batch}")
    res = resolution or entry.resolution
    min_res = entry.min_resolution
    if res < min_res:
        raise CompileError(f"{name}: resolution {res} is below the minimum of {min_res}")
    g = entry.build(batch, res, Seed(seed, values))
    g.meta.update(model=entry.name, batch=batch, resolution=res, seed=seed)
    return g

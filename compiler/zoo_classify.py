"""ImageNet classifiers measured on MLU370 silicon (shared/silicon), written from the definitions
the measured models were converted from: Caffe prototxts (AlexNet_cvgj, SqueezeNet, ResNeXt,
SE-ResNet) and torchvision (MobileNetV3). Layer names follow those files where it helps to compare,
with '_' for Caffe's '/' (names become program tensor names, which allow no path separator).
Pooling keeps each framework's output-size rule (Caffe rounds up; see zoo_layers)."""
from __future__ import annotations

from mlusim.compiler.graph import Builder, Graph
from mlusim.compiler.weights import Seed
from mlusim.compiler.zoo_layers import caffe_maxpool, conv_bn, side_of


def alexnet_bn(batch: int, res: int, seed: Seed) -> Graph:
    """cvjena cnn-models AlexNet_cvgj deploy.prototxt: AlexNet with a batch norm after every conv
    and fc (no LRN), conv2/4/5 in two groups, Caffe ceil-mode 3x3/2 pools, softmax. Its input
    BatchNorm+Scale ('data/bn') is a per-channel affine map ahead of the unpadded conv1, so it
    folds exactly into conv1's weights and bias: it is not a separate layer here."""
    b = Builder("alexnet_bn", seed)
    x = b.input((batch, 3, res, res))
    x = b.unary("relu", b.bn(b.conv(x, 96, 11, 4, name="conv1"), name="conv1_bn"))
    x = caffe_maxpool(b, x, side_of(b, x), 3, 2, name="pool1")
    x = b.unary("relu", b.bn(b.conv(x, 256, 5, 1, 2, groups=2, name="conv2"), name="conv2_bn"))
    x = caffe_maxpool(b, x, side_of(b, x), 3, 2, name="pool2")
    x = b.unary("relu", b.bn(b.conv(x, 384, 3, 1, 1, name="conv3"), name="conv3_bn"))
    x = b.unary("relu", b.bn(b.conv(x, 384, 3, 1, 1, groups=2, name="conv4"), name="conv4_bn"))
    x = b.unary("relu", b.bn(b.conv(x, 256, 3, 1, 1, groups=2, name="conv5"), name="conv5_bn"))
    x = caffe_maxpool(b, x, side_of(b, x), 3, 2, name="pool5")
    side = side_of(b, x)
    x = b.unary("flatten", x)
    x = b.unary("relu", b.bn(b.linear(x, 256 * side * side, 4096, name="fc6"), name="fc6_bn"))
    x = b.unary("relu", b.bn(b.linear(x, 4096, 4096, name="fc7"), name="fc7_bn"))
    return b.graph(b.unary("softmax", b.linear(x, 4096, 1000, name="fc8"), name="prob", dim=1), batch=batch)


def _fire(b: Builder, x: str, squeeze: int, expand: int, name: str) -> str:
    s = b.unary("relu", b.conv(x, squeeze, 1, name=f"{name}_squeeze1x1"))
    e1 = b.unary("relu", b.conv(s, expand, 1, name=f"{name}_expand1x1"))
    e3 = b.unary("relu", b.conv(s, expand, 3, padding=1, name=f"{name}_expand3x3"))
    return b.binary("concat", e1, e3, name=f"{name}_concat")


def squeezenet(version: str):
    """forresti/SqueezeNet v1.0 and v1.1 deploy.prototxt (torchvision's squeezenet1_0/1_1 are the
    same nets): fire modules (1x1 squeeze, 1x1 and 3x3 expands concatenated), Caffe ceil-mode
    pools, a 1x1 conv classifier, global average pool, softmax."""
    v10 = version == "1.0"
    fires = [(16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256)]
    pool_after = {1: "pool1", 4: "pool4", 8: "pool8"} if v10 else {1: "pool1", 3: "pool3", 5: "pool5"}

    def build(batch: int, res: int, seed: Seed) -> Graph:
        b = Builder(f"squeezenet{version.replace('.', '_')}", seed)
        x = b.input((batch, 3, res, res))
        x = b.unary("relu", b.conv(x, 96, 7, 2, name="conv1") if v10 else b.conv(x, 64, 3, 2, name="conv1"))
        x = caffe_maxpool(b, x, side_of(b, x), 3, 2, name="pool1")
        for i, (sq, ex) in enumerate(fires, 2):
            x = _fire(b, x, sq, ex, f"fire{i}")
            if i in pool_after and i > 1:
                x = caffe_maxpool(b, x, side_of(b, x), 3, 2, name=pool_after[i])
        x = b.unary("dropout", x, p=0.5, name="drop9")
        x = b.unary("relu", b.conv(x, 1000, 1, name="conv10"))
        x = b.unary("flatten", b.unary("gap", x, name="pool10"))
        return b.graph(b.unary("softmax", x, name="prob", dim=1), batch=batch)
    return build


def _resnext_block(b: Builder, x: str, width: int, out: int, stride: int, name: str) -> str:
    y = conv_bn(b, x, width, 1, name=f"{name}_conv1")
    y = conv_bn(b, y, width, 3, stride, 1, groups=32, name=f"{name}_conv2")
    y = conv_bn(b, y, out, 1, act=None, name=f"{name}_conv3")
    sc = conv_bn(b, x, out, 1, stride, act=None, name=f"{name}_match_conv") if stride != 1 or b.channels(x) != out else x
    return b.unary("relu", b.binary("add", sc, y, name=f"{name}_elewise"))


def resnext50_32x4d(batch: int, res: int, seed: Seed) -> Graph:
    """soeaver/caffe-model deploy_resnext50_32x4d.prototxt (= torchvision resnext50_32x4d): ResNet-50
    whose 3x3 convs have 32 groups and twice the width (128..1024), stride in the grouped conv."""
    b = Builder("resnext50_32x4d", seed)
    x = b.input((batch, 3, res, res))
    x = conv_bn(b, x, 64, 7, 2, 3, name="conv1")
    x = b.unary("maxpool", x, name="pool1", kernel=3, stride=2, padding=1)
    k = 1
    for stage, (n, width) in enumerate(zip((3, 4, 6, 3), (128, 256, 512, 1024))):
        for j in range(n):
            x = _resnext_block(b, x, width, width * 2, 2 if (j == 0 and stage > 0) else 1, f"resx{k}")
            k += 1
    x = b.unary("flatten", b.unary("gap", x, name="pool_ave"))
    return b.graph(b.unary("softmax", b.linear(x, 2048, 1000, name="classifier"), name="prob", dim=1), batch=batch)


def _squeeze_excite(b: Builder, x: str, squeeze: int, gate: str, name: str) -> str:
    """x * gate(fc2(relu(fc1(gap(x))))) with the fcs as 1x1 convs with bias, as both the Caffe SENet
    prototxts and torchvision's SqueezeExcitation write them."""
    c = b.channels(x)
    s = b.unary("gap", x, name=f"{name}_pool")
    s = b.unary("relu", b.conv(s, squeeze, 1, name=f"{name}_down"))
    s = b.unary(gate, b.conv(s, c, 1, name=f"{name}_up"), name=f"{name}_{gate}")
    return b.binary("mul", x, s, name=f"{name}_scale")


def _se_bottleneck(b: Builder, x: str, width: int, stride: int, name: str) -> str:
    """hujie-frank/SENet SE-ResNet-50.prototxt: the stride sits in the 1x1 reduce conv (Caffe ResNet
    convention), SE with reduction 16 on the block's output before the residual sum."""
    out = width * 4
    y = conv_bn(b, x, width, 1, stride, name=f"{name}_1x1_reduce")
    y = conv_bn(b, y, width, 3, 1, 1, name=f"{name}_3x3")
    y = conv_bn(b, y, out, 1, act=None, name=f"{name}_1x1_increase")
    y = _squeeze_excite(b, y, out // 16, "sigmoid", f"{name}_se")
    sc = conv_bn(b, x, out, 1, stride, act=None, name=f"{name}_1x1_proj") if stride != 1 or b.channels(x) != out else x
    return b.unary("relu", b.binary("add", y, sc, name=f"{name}_sum"))


def se_resnet50(batch: int, res: int, seed: Seed) -> Graph:
    b = Builder("se_resnet50", seed)
    x = b.input((batch, 3, res, res))
    x = conv_bn(b, x, 64, 7, 2, 3, name="conv1_7x7_s2")
    x = caffe_maxpool(b, x, side_of(b, x), 3, 2, name="pool1_3x3_s2")
    for stage, (n, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), 2):
        for j in range(n):
            x = _se_bottleneck(b, x, width, 2 if (j == 0 and stage > 2) else 1, f"conv{stage}_{j + 1}")
    x = b.unary("flatten", b.unary("gap", x, name="pool5_7x7_s1"))
    return b.graph(b.unary("softmax", b.linear(x, 2048, 1000, name="classifier"), name="prob", dim=1), batch=batch)


def _divisible(v: float, d: int = 8) -> int:
    """torchvision's _make_divisible: round to a multiple of d, never below 90% of v."""
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


# torchvision mobilenetv3.py _mobilenet_v3_conf: (kernel, expanded, out, SE, activation, stride)
V3_LARGE = [(3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
            (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
            (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
            (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
            (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1)]
V3_SMALL = [(3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
            (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
            (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
            (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1)]


def mobilenetv3(name: str, setting, last_conv: int, last_channel: int):
    """torchvision mobilenet_v3_large / _small: inverted residuals with ReLU or hardswish, squeeze-
    excitation (hardsigmoid gate, squeeze to expanded/4 rounded to 8) after the depthwise conv."""
    def build(batch: int, res: int, seed: Seed) -> Graph:
        b = Builder(name, seed)
        x = b.input((batch, 3, res, res))
        x = conv_bn(b, x, 16, 3, 2, 1, act="hardswish", name="features.0")
        for i, (k, exp, out, se, act, stride) in enumerate(setting, 1):
            a, ci, blk = ("relu" if act == "RE" else "hardswish"), b.channels(x), f"features.{i}"
            y = conv_bn(b, x, exp, 1, act=a, name=f"{blk}.expand") if exp != ci else x
            y = conv_bn(b, y, exp, k, stride, (k - 1) // 2, groups=exp, act=a, name=f"{blk}.dw")
            if se:
                y = _squeeze_excite(b, y, _divisible(exp // 4), "hardsigmoid", f"{blk}.se")
            y = conv_bn(b, y, out, 1, act=None, name=f"{blk}.project")
            x = b.binary("add", y, x, name=f"{blk}.add") if stride == 1 and ci == out else y
        x = conv_bn(b, x, last_conv, 1, act="hardswish", name=f"features.{len(setting) + 1}")
        x = b.unary("flatten", b.unary("gap", x, name="avgpool"))
        x = b.unary("hardswish", b.linear(x, last_conv, last_channel, name="classifier.0"))
        x = b.unary("dropout", x, p=0.2)
        return b.graph(b.linear(x, last_channel, 1000, name="classifier.3"), batch=batch)
    return build

"""ImageNet classifiers measured on MLU370 silicon (shared/silicon), written from the definitions
the measured models were converted from: Caffe prototxts (AlexNet_cvgj, SqueezeNet, ResNeXt,
SE-ResNet) and torchvision (MobileNetV3). Layer names follow those files where it helps to compare.
Pooling keeps each framework's output-size rule (Caffe rounds up; see zoo_layers)."""
from __future__ import annotations

from mlusim.compiler.graph import Builder, Graph
from mlusim.compiler.zoo_layers import caffe_maxpool, conv_bn, side_of


def alexnet_bn(batch: int, res: int, seed: int) -> Graph:
    """cvjena cnn-models AlexNet_cvgj deploy.prototxt: AlexNet with a batch norm after every conv
    and fc (no LRN), conv2/4/5 in two groups, Caffe ceil-mode 3x3/2 pools, softmax. Its input
    BatchNorm+Scale ('data/bn') is a per-channel affine map ahead of the unpadded conv1, so it
    folds exactly into conv1's weights and bias: it is not a separate layer here."""
    b = Builder("alexnet_bn", seed)
    x = b.input((batch, 3, res, res))
    x = b.unary("relu", b.bn(b.conv(x, 96, 11, 4, name="conv1"), name="conv1/bn"))
    x = caffe_maxpool(b, x, side_of(b, x), 3, 2, name="pool1")
    x = b.unary("relu", b.bn(b.conv(x, 256, 5, 1, 2, groups=2, name="conv2"), name="conv2/bn"))
    x = caffe_maxpool(b, x, side_of(b, x), 3, 2, name="pool2")
    x = b.unary("relu", b.bn(b.conv(x, 384, 3, 1, 1, name="conv3"), name="conv3/bn"))
    x = b.unary("relu", b.bn(b.conv(x, 384, 3, 1, 1, groups=2, name="conv4"), name="conv4/bn"))
    x = b.unary("relu", b.bn(b.conv(x, 256, 3, 1, 1, groups=2, name="conv5"), name="conv5/bn"))
    x = caffe_maxpool(b, x, side_of(b, x), 3, 2, name="pool5")
    side = side_of(b, x)
    x = b.unary("flatten", x)
    x = b.unary("relu", b.bn(b.linear(x, 256 * side * side, 4096, name="fc6"), name="fc6/bn"))
    x = b.unary("relu", b.bn(b.linear(x, 4096, 4096, name="fc7"), name="fc7/bn"))
    return b.graph(b.unary("softmax", b.linear(x, 4096, 1000, name="fc8"), name="prob", dim=1), batch=batch)


def _fire(b: Builder, x: str, squeeze: int, expand: int, name: str) -> str:
    s = b.unary("relu", b.conv(x, squeeze, 1, name=f"{name}/squeeze1x1"))
    e1 = b.unary("relu", b.conv(s, expand, 1, name=f"{name}/expand1x1"))
    e3 = b.unary("relu", b.conv(s, expand, 3, padding=1, name=f"{name}/expand3x3"))
    return b.binary("concat", e1, e3, name=f"{name}/concat")


def _squeezenet(version: str):
    """forresti/SqueezeNet v1.0 and v1.1 deploy.prototxt (torchvision's squeezenet1_0/1_1 are the
    same nets): fire modules (1x1 squeeze, 1x1 and 3x3 expands concatenated), Caffe ceil-mode
    pools, a 1x1 conv classifier, global average pool, softmax."""
    v10 = version == "1.0"
    fires = [(16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256)]
    pool_after = {1: "pool1", 4: "pool4", 8: "pool8"} if v10 else {1: "pool1", 3: "pool3", 5: "pool5"}

    def build(batch: int, res: int, seed: int) -> Graph:
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


def resnext50_32x4d(batch: int, res: int, seed: int) -> Graph:
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

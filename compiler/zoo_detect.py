"""Detectors measured on MLU370 silicon, from their darknet cfg files: YOLOv3-tiny (and the heads'
idioms: leaky ReLU, darknet's stride-1 max pool, nearest upsampling, route = channel concat).
A detector has several outputs (one per detection scale); the graph lists them all."""
from __future__ import annotations

from mlusim.compiler.graph import Builder, Graph
from mlusim.compiler.weights import Seed

LEAKY = 0.1     # darknet's leaky activation


def _darknet_conv(b: Builder, x: str, co: int, k: int, i: int, stride: int = 1) -> str:
    """[convolutional] batch_normalize=1, pad=1 (k//2), activation=leaky: conv without bias, BN."""
    y = b.bn(b.conv(x, co, k, stride, k // 2, bias=False, name=f"conv{i}"), name=f"bn{i}")
    return b.unary("leaky_relu", y, name=f"leaky{i}", slope=LEAKY)


def _darknet_maxpool(b: Builder, x: str, size: int, stride: int, i: int) -> str:
    """[maxpool]: darknet pads size-1 in total, placed after the data (offset -padding/2 = 0 for
    size 2), with -FLT_MAX, so the stride-1 pool keeps 13x13 at 13x13 and padding never wins."""
    pad = size - 1
    lo = pad // 2
    return b.unary("maxpool", x, name=f"pool{i}", kernel=size, stride=stride, padding=(lo, pad - lo, lo, pad - lo))


def yolov3_tiny(batch: int, res: int, seed: Seed) -> Graph:
    """pjreddie/darknet cfg/yolov3-tiny.cfg: layers 0-22 (conv / maxpool / route / upsample), the two
    1x1 detection convs (255 = 3 anchors x (80 classes + 5), linear, with bias) feeding [yolo]
    layers 16 and 23, which are the outputs `yolo16` (stride 32) and `yolo23` (stride 16). The
    [yolo] layers only apply a logistic to some channels and decode boxes on the host."""
    b = Builder("yolov3_tiny", seed)
    x = b.input((batch, 3, res, res))
    for i, co in zip(range(0, 12, 2), (16, 32, 64, 128, 256, 512)):
        x = _darknet_conv(b, x, co, 3, i)
        if i == 8:
            route8 = x
        x = _darknet_maxpool(b, x, 2, 2 if i < 10 else 1, i + 1)
    x = _darknet_conv(b, x, 1024, 3, 12)
    x13 = _darknet_conv(b, x, 256, 1, 13)
    x = _darknet_conv(b, x13, 512, 3, 14)
    head1 = b.conv(x, 255, 1, name="yolo16")
    x = _darknet_conv(b, x13, 128, 1, 18)
    x = b.unary("upsample", x, name="upsample19", scale=2)
    x = b.binary("concat", x, route8, name="route20")
    x = _darknet_conv(b, x, 256, 3, 21)
    head2 = b.conv(x, 255, 1, name="yolo23")
    return b.graph(head1, head2, batch=batch)


def _head(b: Builder, x: str, width: int, first: int) -> tuple[str, str]:
    """yolov3.cfg's five-conv detection block (1x1 width, 3x3 2*width, ...), then the 3x3 and the
    linear 1x1 detection conv: returns (the fifth conv's output, which the next route takes, the
    head's output)."""
    for k in range(5):
        x = _darknet_conv(b, x, width if k % 2 == 0 else 2 * width, 1 if k % 2 == 0 else 3, first + k)
    route = x
    x = _darknet_conv(b, x, 2 * width, 3, first + 5)
    return route, b.conv(x, 255, 1, name=f"yolo{first + 7}")


def yolov3(batch: int, res: int, seed: Seed) -> Graph:
    """pjreddie/darknet cfg/yolov3.cfg: the Darknet-53 backbone (stride-2 3x3 convs, residual
    [shortcut] blocks of 1x1 + 3x3, linear sum) and three detection scales joined by route +
    upsample; outputs `yolo82` (stride 32), `yolo94` (16) and `yolo106` (8)."""
    b = Builder("yolov3", seed)
    x = _darknet_conv(b, b.input((batch, 3, res, res)), 32, 3, 0)
    i, saved = 1, {}
    for co, blocks in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
        x = _darknet_conv(b, x, co, 3, i, stride=2)
        i += 1
        for _ in range(blocks):
            y = _darknet_conv(b, x, co // 2, 1, i)
            y = _darknet_conv(b, y, co, 3, i + 1)
            x = b.binary("add", x, y, name=f"shortcut{i + 2}")
            i += 3
        saved[i - 1] = x
    route, out1 = _head(b, x, 512, 75)
    x = b.unary("upsample", _darknet_conv(b, route, 256, 1, 84), name="upsample85", scale=2)
    route, out2 = _head(b, b.binary("concat", x, saved[61], name="route86"), 256, 87)
    x = b.unary("upsample", _darknet_conv(b, route, 128, 1, 96), name="upsample97", scale=2)
    _, out3 = _head(b, b.binary("concat", x, saved[36], name="route98"), 128, 99)
    return b.graph(out1, out2, out3, batch=batch)


def mobilenet_ssd(batch: int, res: int, seed: Seed) -> Graph:
    """chuanqi305/MobileNet-SSD deploy.prototxt (VOC, 21 classes, 300x300): MobileNet v1 (conv +
    depthwise/pointwise pairs, BN, ReLU), four extra stride-2 stages (conv14..17), and 1x1 loc/conf
    convs on conv11, conv13 and conv14_2..17_2 (3 priors on conv11, 6 elsewhere). The outputs are
    those twelve convs: their Permute(0,2,3,1)+Flatten is the device's NHWC order already, and the
    concat, softmax, prior boxes and DetectionOutput (NMS) are host post-processing here."""
    from mlusim.compiler.zoo_layers import conv_bn

    b = Builder("mobilenet_ssd", seed)
    x = conv_bn(b, b.input((batch, 3, res, res)), 32, 3, 2, 1, name="conv0")
    taps = {}
    for i, (co, stride) in enumerate([(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5
                                     + [(1024, 2), (1024, 1)], 1):
        x = conv_bn(b, x, b.channels(x), 3, stride, 1, groups=b.channels(x), name=f"conv{i}_dw")
        x = taps[f"conv{i}"] = conv_bn(b, x, co, 1, name=f"conv{i}")
    for i, (mid, co) in zip(range(14, 18), ((256, 512), (128, 256), (128, 256), (64, 128))):
        x = conv_bn(b, x, mid, 1, name=f"conv{i}_1")
        x = taps[f"conv{i}_2"] = conv_bn(b, x, co, 3, 2, 1, name=f"conv{i}_2")
    outs = []
    for src in ("conv11", "conv13", "conv14_2", "conv15_2", "conv16_2", "conv17_2"):
        priors = 3 if src == "conv11" else 6
        outs += [b.conv(taps[src], 4 * priors, 1, name=f"{src}_mbox_loc"),
                 b.conv(taps[src], 21 * priors, 1, name=f"{src}_mbox_conf")]
    return b.graph(*outs, batch=batch)

"""Agreement with ONNX Runtime at full size: torchvision-style ResNet-18 and MobileNetV2 (seeded
random weights, torch_mlu.models) exported with torch.onnx.export, quantized with
onnxruntime.quantization.quantize_static (QDQ, per-channel int8 weights, uint8 activations,
calibrated on random images), compiled by mlusim, simulated, and compared element by element.

    python bench/onnx_agreement.py                      # 224 x 224, 2 images, 16 cores
    python bench/onnx_agreement.py --resolution 64 --images 4 --models resnet18

Prints per model: output elements equal to ONNX Runtime's, the largest difference in output
quantization steps, whether the simulator equals mlusim's reference bit for bit, and cycles.
Needs the onnx extra: pip install 'mlusim[onnx]'.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def build(name: str, res: int, workdir: Path) -> str:
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    import torch_mlu.models as zoo_torch

    f = workdir / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(zoo_torch.build(name, resolution=res), (torch.rand(1, 3, res, res),), str(f), dynamo=False,
                          opset_version=13, input_names=["input"], output_names=["output"])

    class Images(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": np.random.default_rng(i).uniform(0, 1, (1, 3, res, res)).astype(np.float32)}
                            for i in range(8)])

        def get_next(self):
            return next(self.it, None)

    q = workdir / f"{name}_qdq.onnx"
    quantize_static(str(f), str(q), Images(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return str(q)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet18,mobilenetv2")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--cores", type=int, default=16)
    args = ap.parse_args()

    import onnxruntime as ort

    from mlusim.compiler import compile_onnx
    from mlusim.compiler.reference import run_quant
    from mlusim.sim import simulate

    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            t0 = time.perf_counter()
            path = build(name, args.resolution, Path(tmp))
            c = compile_onnx(path, cluster_fusion=False)
            so = ort.SessionOptions()
            so.log_severity_level = 3
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            step = c.graph.node(c.graph.output).q["scale"]
            diffs, exact, cycles = [], True, 0
            for seed in range(args.images):
                x = np.random.default_rng(1000 + seed).uniform(0, 1, c.graph.input.shape).astype(np.float32)
                res = simulate(c.program, cores=args.cores, inputs={"input": x})
                out = res.outputs["output"]
                cycles = res.cycles
                exact &= bool(np.array_equal(out.view(np.uint32), run_quant(c.graph, x)["__output__"].view(np.uint32)))
                diffs.append((np.abs(out.astype(np.float64) - sess.run(None, {"input": x})[0]) / step).ravel())
            d = np.concatenate(diffs)
            print(f"{name} {args.resolution}px, {args.images} image(s): {np.mean(d < 1e-3):.4%} of {d.size} outputs equal "
                  f"ONNX Runtime's, max {d.max():.3f} steps; simulator == reference bit for bit: {exact}; "
                  f"{cycles:,.0f} cycles on {args.cores} cores ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()

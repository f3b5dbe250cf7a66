"""Seeded weights (compiler/weights.py): a weight kept as its recipe is drawn with exactly the
values an eager draw gives, whole or block by block, and leaves the model's generator where the
eager draw would; quantization and the float reference read it without holding it whole."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mlusim.compiler import passes, quant, zoo
from mlusim.compiler.reference import float_values, run_float
from mlusim.compiler.weights import SeededWeight, draw, row_blocks

SHAPE = (37, 5, 3, 3)
FACTOR = np.float32(0.25)


def _eager(seed: int = 3):
    rng = np.random.default_rng(seed)
    rng.standard_normal(11)                       # the weight starts mid-stream
    w = rng.standard_normal(SHAPE, dtype=np.float32) * FACTOR
    return w, rng.bit_generator.state


def test_a_lazy_draw_has_the_eager_values_and_leaves_the_generator_in_step():
    want, after = _eager()
    rng = np.random.default_rng(3)
    rng.standard_normal(11)
    w = draw(rng, SHAPE, FACTOR, lazy_bytes=0)
    assert isinstance(w, SeededWeight) and w.values is None
    assert rng.bit_generator.state == after
    assert w.shape == SHAPE and w.size == want.size and w.dtype == np.float32
    assert np.array_equal(np.asarray(w), want)
    cuts = [0, 1, 9, 10, 37]
    assert np.array_equal(np.concatenate(list(row_blocks(w, cuts))), want)


def test_an_eager_draw_keeps_its_recipe_and_a_released_one_draws_the_same():
    want, after = _eager()
    rng = np.random.default_rng(3)
    rng.standard_normal(11)
    w = draw(rng, SHAPE, FACTOR)
    assert rng.bit_generator.state == after and np.array_equal(w.values, want)
    assert np.asarray(w) is w.values
    again = w.released()
    assert again.values is None and np.array_equal(np.asarray(again), want)
    with pytest.raises(ValueError):
        np.asarray(again, copy=False)


@pytest.mark.parametrize("per_channel", [True, False])
def test_quantized_weights_of_a_lazy_weight_equal_the_arrays(per_channel):
    rng = np.random.default_rng(5)
    w = draw(rng, (300, 70), np.float32(0.1), lazy_bytes=0)
    assert all(np.array_equal(a, b) for a, b in zip(quant._weights(w, per_channel, 127, 0.9),
                                                     quant._weights(np.asarray(w), per_channel, 127, 0.9)))


def test_calibration_ranges_are_those_of_the_float_model():
    g = zoo.build("resnet18", 2, 32)
    x = np.random.default_rng(0).uniform(0, 1, g.input.shape).astype(np.float32)
    full = run_float(g, x)
    ranges = quant.calibrate(g, [x])
    assert ranges == {k: float(np.max(np.abs(v))) for k, v in full.items()}
    streamed = dict(float_values(g, x))
    assert all(np.array_equal(streamed[k], v) for k, v in full.items())


def test_calibration_runs_on_one_blas_thread_whatever_the_caller_allows():
    """More BLAS threads change OpenBLAS's summation order, so the scales (and the program) would
    depend on the host; calibrate pins one thread and gives the caller's setting back after."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    g = zoo.build("resnet18", 2, 32)
    x = np.random.default_rng(0).uniform(0, 1, g.input.shape).astype(np.float32)
    seen: set[int] = set()
    with threadpool_limits(limits=2, user_api="blas"):
        ranges = quant.calibrate(g, [x], progress=lambda *_: seen.update(blas_threads()))
        after = blas_threads()
    assert seen == {1}
    assert after == {2}
    assert ranges == quant.calibrate(g, [x])


class CountingExecutor(ThreadPoolExecutor):
    """A one-thread executor that counts the jobs it is given."""

    def __init__(self):
        super().__init__(1)
        self.jobs = 0

    def submit(self, fn, *args, **kwargs):
        self.jobs += 1
        return super().submit(fn, *args, **kwargs)


@pytest.mark.parametrize("images,nan", [(2, False), (3, False), (4, True)])
def test_calibration_halves_beside_give_the_whole_batchs_ranges(images, nan):
    """A sample's later images run the per-image prefix in a second thread (quant._sample_ranges):
    every range, its order and the progress the same bit for bit as one thread over the batch,
    a NaN in either half included."""
    from threadpoolctl import threadpool_limits

    g = passes.optimize(zoo.build("resnet18", images, 32))
    x = np.random.default_rng(0).uniform(0, 1, g.input.shape).astype(np.float32)
    if nan:
        x[-1, 0, 3, 3] = np.nan
    steps: dict[str, list] = {"alone": [], "beside": []}
    with threadpool_limits(limits=1, user_api="blas"), CountingExecutor() as beside:
        alone = quant._calibrate(g, [x, x[:1]], False, lambda *a: steps["alone"].append(a))
        split = quant._calibrate(g, [x, x[:1]], False, lambda *a: steps["beside"].append(a), beside)
    assert beside.jobs == 1                     # the batch of one is not split
    assert list(split) == list(alone)
    assert [float(v).hex() for v in split.values()] == [float(v).hex() for v in alone.values()]
    assert any(np.isnan(v) for v in alone.values()) == nan
    assert steps["beside"] == steps["alone"]


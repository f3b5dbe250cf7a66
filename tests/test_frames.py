"""DataFrames of runs, scaling tables, sweeps and layers: the CSV's columns and values, typed."""
from __future__ import annotations

import json
import math
import pickle
import sys
from pathlib import Path

import pytest

import pandas as pd

from mlusim.errors import MlusimError
from mlusim.experiments import LAYER_COLUMNS, run_table, scaling, write_csv
from mlusim.frames import Rows
from mlusim.sweep import columns, sweep, sweep_table

ROOT = Path(__file__).resolve().parents[1]
MATMUL = str(ROOT / "examples" / "matmul.s")


@pytest.fixture(scope="module")
def mnist_table():
    return scaling("mnist", "mlu270", [1, 4], per_layer=True)


def same_as_csv(df, rows, path, cols=None):
    """The frame holds the CSV's headers, and the CSV's numbers in every numeric column."""
    write_csv(rows, path, cols)
    csv = pd.read_csv(path)
    flat = df.reset_index()
    assert sorted(flat.columns) == sorted(csv.columns)
    for col in csv.columns:
        if pd.api.types.is_numeric_dtype(flat[col]) and not pd.api.types.is_bool_dtype(flat[col]):
            a, b = flat[col].astype("float64").to_numpy(), csv[col].astype("float64").to_numpy()
            assert a == pytest.approx(b, rel=1e-9, nan_ok=True), col


def test_scaling_frame_is_the_csv_typed(mnist_table, tmp_path):
    df = mnist_table.to_dataframe()
    assert df.index.name == "Cores" and list(df.index) == [1, 4]
    assert df["Total Cycles"].dtype == "int64" and df["MACs"].dtype == "int64"
    assert df["Latency (ms)"].dtype == "float64" and df["Overall Util %"].dtype == "float64"
    assert df["Interrupted"].dtype == "bool" and df["Bound"].dtype == "string"
    for r in mnist_table:
        assert df.loc[r["cores"], "Total Cycles"] == round(r["cycles"])
        assert df.loc[r["cores"], "Overall Util %"] == pytest.approx(100 * r["mac_utilization"])
    same_as_csv(df, mnist_table, tmp_path / "s.csv")


def test_layer_frame_keyed_by_layer_and_cores(mnist_table, tmp_path):
    layers = mnist_table.layers()
    df = layers.to_dataframe()
    assert df.index.names == ["Layer", "Cores"] and df.index.is_unique
    names = [lr["layer"] for lr in mnist_table[0]["layers"]]
    assert list(dict.fromkeys(df.index.get_level_values("Layer"))) == names     # the table's order
    for r in mnist_table:
        for lr in r["layers"]:
            got = df.loc[(lr["layer"], r["cores"])]
            assert got["Total Cycles"] == round(lr["cycles"]) and got["LayerID"] == lr["layer_id"]
            assert got["Stall Cycles"] == round(lr["stall_cycles"])
    assert df["Start Cycle"].dtype == "int64" and df["Fused"].dtype == "bool"
    assert list(df.loc[names[1]].index) == [1, 4]
    same_as_csv(df, layers, tmp_path / "l.csv", LAYER_COLUMNS)


def test_run_table_of_one_result_matches_scaling(mnist_table):
    from mlusim.runs import run_at
    from mlusim.config import load_config

    cfg = load_config("mlu270")
    res = run_at("mnist", cfg, 4)
    one = run_table(res)
    df = one.to_dataframe()
    assert list(df.index) == [4]
    assert df.loc[4, "Total Cycles"] == mnist_table.to_dataframe().loc[4, "Total Cycles"]
    assert one.layers().to_dataframe().index.names == ["Layer", "Cores"]


def test_sweep_frame_with_a_failed_point(tmp_path):
    rows = sweep(MATMUL, "mlu270", {"dram.bandwidth_gbps": [51.2, 102.4]}, cores=[1, 4], jobs=1)
    df = rows.to_dataframe()
    assert df.index.name == "point" and list(df.index) == [0, 1, 2, 3]
    assert df["dram.bandwidth_gbps (GB/s)"].dtype == "float64" and df["Replanned"].dtype == "bool"
    assert list(df["Cores"]) == [1, 4, 1, 4]
    same_as_csv(df, rows, tmp_path / "w.csv", columns(["dram.bandwidth_gbps"]))
    broken = [dict(rows[0]), {"point": 1, "dram.bandwidth_gbps": 102.4, "cores": 4, "error": "does not fit"}]
    bdf = sweep_table(broken, ["dram.bandwidth_gbps"]).to_dataframe()
    assert str(bdf["Total Cycles"].dtype) == "Int64" and bdf["Total Cycles"].isna().tolist() == [False, True]
    assert math.isnan(bdf.loc[1, "Latency (ms)"]) and bdf.loc[1, "Error"] == "does not fit"


def test_rows_stay_plain_lists(mnist_table):
    assert isinstance(mnist_table, list) and json.loads(json.dumps(mnist_table, default=float))[0]["cores"] == 1
    back = pickle.loads(pickle.dumps(mnist_table))
    assert back.to_dataframe().equals(mnist_table.to_dataframe())
    assert Rows([{"a": 1}]).index({"a": 1}) == 0          # still list.index
    empty = Rows([], [("cycles", "Total Cycles", 1)], {"cycles": "int"}, ["cycles"])
    assert list(empty.to_dataframe().columns) == ["Total Cycles"] and len(empty.to_dataframe()) == 0


def test_missing_pandas_names_the_extra(monkeypatch, mnist_table):
    monkeypatch.setitem(sys.modules, "pandas", None)     # import pandas -> ImportError
    with pytest.raises(MlusimError, match=r"pip install 'mlusim\[pandas\]'"):
        mnist_table.to_dataframe()

"""Experiment rows as pandas DataFrames: the CSV's columns, typed, one row per run, point or layer.

The experiments return lists of plain dicts (JSON, CSV and the plots take them as they are); a
`Rows` is such a list that also knows the columns its CSV has, the type of each and which columns
key a row, so `rows.to_dataframe()` gives the same table as the CSV file, ready to group and join:

    df = scaling("lenet5", cores=[1, 4], per_layer=True).layers().to_dataframe()
    df.loc["conv1"]          # the layer on every core count, indexed by Cores

pandas is an optional extra (`pip install 'mlusim[pandas]'`), imported only when a frame is made,
so `import mlusim` and the CLI never load it.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from mlusim.errors import MlusimError

Column = tuple[str, str, float]          # (row key, CSV header with unit, CSV scale)
KINDS = ("int", "float", "bool", "str")


def pandas():
    """The pandas module, or a one-line error naming the extra that installs it."""
    try:
        import pandas as pd
    except ImportError:
        raise MlusimError("to_dataframe() needs pandas: pip install 'mlusim[pandas]'") from None
    return pd


def all_columns(rows: Iterable[dict], columns: Iterable[Column]) -> list[Column]:
    """`columns`, then every other scalar key of the rows in the order met (header = key): what a
    CSV of the rows holds, so the CSV and the DataFrame name the same columns."""
    out = list(columns)
    known = {c[0] for c in out}
    for r in rows:
        for k, v in r.items():
            if k not in known and not isinstance(v, (list, dict)):
                out.append((k, k, 1))
                known.add(k)
    return out


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def infer_kind(values: list) -> str:
    """The type of a column no table names (a swept config key, an extra key): from its values."""
    present = [v for v in values if not _missing(v)]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float"
    return "str"


def series(values: list, kind: str, scale: float, name: str):
    """One typed column: ints rounded (pandas' nullable Int64 where a value is missing), floats
    scaled as in the CSV (fractions to %) with NaN for missing, booleans, and text."""
    pd = pandas()
    if kind == "int":
        vals = [None if _missing(v) else int(round(v)) for v in values]
        return pd.Series(vals, name=name, dtype="Int64" if None in vals else "int64")
    if kind == "float":
        return pd.Series([math.nan if _missing(v) else float(v) * scale for v in values], name=name, dtype="float64")
    if kind == "bool":
        vals = [None if _missing(v) else bool(v) for v in values]
        return pd.Series(vals, name=name, dtype="boolean" if None in vals else "bool")
    return pd.Series([None if _missing(v) else str(v) for v in values], name=name, dtype="string")


def to_dataframe(rows: list[dict], columns: Iterable[Column], kinds: dict[str, str], index: Iterable[str] = ()):
    """The rows as a DataFrame with the CSV's headers and scales; `kinds` types a column by row key
    (else inferred from its values); the `index` keys (when the rows have them) become the index."""
    pd = pandas()
    cols = all_columns(rows, columns)
    data = {}
    for key, header, scale in cols:
        values = [r.get(key) for r in rows]
        data[header] = series(values, kinds.get(key) or infer_kind(values), scale, header)
    df = pd.DataFrame(data, columns=[h for _, h, _ in cols])
    heads = {k: h for k, h, _ in cols}
    keys = [heads[k] for k in index if k in heads]
    return df.set_index(keys) if keys and rows else df


class Rows(list):
    """A list of row dicts, as the experiments always returned, that also turns into a typed
    DataFrame with the columns of its CSV (`to_dataframe()`)."""

    def __init__(self, rows: Iterable[dict] = (), columns: Iterable[Column] = (), kinds: dict[str, str] | None = None,
                 index: Iterable[str] = ()):
        super().__init__(rows)
        self.csv_columns = list(columns)
        self.kinds = dict(kinds or {})
        self.key_columns = list(index)      # not `index`: list.index stays the list's

    def to_dataframe(self):
        """A pandas DataFrame: one row per entry, columns named and scaled as in the CSV (fractions
        as %), cycles as integers, keyed by `self.key_columns`. Needs pandas (`mlusim[pandas]`)."""
        return to_dataframe(self, self.csv_columns, self.kinds, self.key_columns)

"""Number and text formatting shared by the report and the run summary (consparse.report.format)."""

from __future__ import annotations

import math

import pytest

from consparse.report.format import format_count, is_nan, significant_decimals


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (950, "950"), (999.96, "1.0k"), (266_610, "266.6k"), (999_960, "1.0M"), (1_234_567, "1.2M"), (2.5e9, "2.5G"), (math.nan, "—")],
)
def test_format_count(value: float, text: str) -> None:
    assert format_count(value) == text


@pytest.mark.parametrize(("value", "decimals"), [(0.0823, 4), (0.213, 3), (12.3, 1), (123.0, 0), (4567.0, 0)])
def test_significant_decimals(value: float, decimals: int) -> None:
    assert significant_decimals(value) == decimals


def test_format_count_without_a_number() -> None:
    assert format_count(None) == format_count("12") == "—"


def test_is_nan_without_pandas_types() -> None:
    import numpy as np
    import pandas as pd

    assert is_nan(None) and is_nan(math.nan) and is_nan(np.float64("nan")) and is_nan(pd.NA)
    assert not is_nan(0) and not is_nan("x") and not is_nan([math.nan]) and not is_nan(np.int64(3))

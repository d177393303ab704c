"""A raw example's fingerprint: the same example gets the same one, different examples differ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core import fingerprints


def test_a_row_is_its_values_by_column_name_whatever_the_dtype_or_position() -> None:
    frame = pd.DataFrame({"x1": [1.5, 3.0, np.nan], "flag": [True, False, True],
                          "colour": ["red", "blue", None]})
    same = pd.DataFrame({"colour": ["blue", None, "red"], "flag": ["false", "TRUE", "True"],
                         "x1": ["3", np.nan, "1.50"]})  # shuffled rows, columns, dtypes
    assert fingerprints.of_rows(frame) == [fingerprints.of_rows(same)[i] for i in (2, 0, 1)]
    other = frame.assign(x1=[1.5, 3.0001, np.nan])
    assert fingerprints.of_rows(other)[1] != fingerprints.of_rows(frame)[1]
    assert fingerprints.of_rows(other)[0] == fingerprints.of_rows(frame)[0]


def test_an_image_is_its_bytes_wherever_it_lies(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"\x89PNG same bytes")
    (tmp_path / "y.png").write_bytes(b"\x89PNG same bytes")
    (tmp_path / "z.png").write_bytes(b"\x89PNG other bytes")
    a, y, z = (fingerprints.of_file(tmp_path / n) for n in ("a/x.png", "y.png", "z.png"))
    assert a == y != z and len(a) == fingerprints.HEX


def test_learned_record_round_trips_sorted_and_unique(tmp_path: Path) -> None:
    path = tmp_path / fingerprints.LEARNED_FILE
    assert fingerprints.write_learned(path, ["b", "a", "b"]) == 2
    assert path.read_text() == "a\nb\n" and fingerprints.read_learned(path) == {"a", "b"}

"""The report's spreadsheet: written a deployment at a time, streamed row by row, continued on a
new sheet at Excel's limit."""

from __future__ import annotations

import io

import pandas as pd

from trapline.services.tools.report_sheet import write_sheets


def test_chunks_make_one_csv_and_a_workbook_continued_on_numbered_sheets(tmp_path):
    frame = pd.DataFrame({
        "media_id": [f"m{i}" for i in range(7)],
        "animal_count": [i % 3 for i in range(7)],
        "max_detection_conf": [0.5, None, 0.9, 0.1, None, 0.2, 0.3],
    })  # fmt: skip
    chunks = [frame.iloc[:2], frame.iloc[2:7]]  # two deployments; a sheet ends inside the second
    path, csv = tmp_path / "photos.xlsx", io.StringIO()
    with path.open("wb") as handle:
        sheets = write_sheets(iter(chunks), csv, handle, rows_per_sheet=3)
    read = pd.read_excel(path, sheet_name=None)
    assert sheets == 3 and list(read) == ["photos", "photos 2", "photos 3"]
    assert [len(page) for page in read.values()] == [3, 3, 1]
    back = pd.concat(read.values(), ignore_index=True)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)  # NaN stays an empty cell
    csv.seek(0)
    pd.testing.assert_frame_equal(pd.read_csv(csv), frame)  # one header, every row once


def test_no_media_still_gives_the_columns(tmp_path):
    empty = pd.DataFrame({"media_id": pd.Series([], dtype=object)})
    path, csv = tmp_path / "photos.xlsx", io.StringIO()
    with path.open("wb") as handle:
        assert write_sheets(iter([empty]), csv, handle) == 1
    assert csv.getvalue().strip() == "media_id"
    assert list(pd.read_excel(path)) == ["media_id"]

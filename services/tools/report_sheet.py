"""The report's per-photo spreadsheet (`photos.csv`, `photos.xlsx`): one row per photo or video,
for the users who open results in Excel or LibreOffice rather than code.

Kept apart from the HTML page because a season is large: the .xlsx is streamed row by row and
continues on numbered sheets past Excel's row limit (docs/report.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from trapline.services.tools.cells import neutralised

EXCEL_MAX_ROWS = 1_048_576  # rows per worksheet, the header included (Excel's limit)


def write_sheets(
    chunks: Iterable[pd.DataFrame], csv: Any, xlsx: Any, rows_per_sheet: int = EXCEL_MAX_ROWS - 1
) -> int:
    """The spreadsheet's `chunks` (same columns, in order) as CSV text to `csv` and as an .xlsx
    workbook to `xlsx`, one chunk at a time: the report holds one deployment's rows, not the
    season's (100,000 photos: the whole sheet and its CSV text were ~2x the media rows' memory).
    The .xlsx is streamed row by row (openpyxl's write-only mode: 3x faster than pandas'
    `to_excel`, flat in memory) and continues on sheets "photos 2", "photos 3"... past Excel's
    row limit. Returns the number of worksheets."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell

    book = Workbook(write_only=True)
    page, sheets, rows = None, 0, 0

    def as_text(value: Any) -> Any:
        """A string cell stays a string in the .xlsx (openpyxl makes '=...' a formula), shown
        exactly as written."""
        if not isinstance(value, str):
            return value
        cell = WriteOnlyCell(page, value=value)
        cell.data_type = "s"
        return cell

    for index, chunk in enumerate(chunks):
        chunk.map(neutralised).to_csv(csv, header=index == 0, index=False)
        values = chunk.astype(object).where(chunk.notna(), None)  # NaN/NaT: an empty cell
        if page is None:
            header = list(chunk.columns)
        for row in values.itertuples(index=False, name=None):
            if page is None or rows == rows_per_sheet:
                sheets += 1
                page = book.create_sheet("photos" if sheets == 1 else f"photos {sheets}")
                page.append(header)
                rows = 0
            page.append([as_text(value) for value in row])
            rows += 1
        if page is None:  # no rows yet: the header alone
            sheets = 1
            page = book.create_sheet("photos")
            page.append(header)
    book.save(xlsx)
    return sheets


def photo_sheet(media: pd.DataFrame, observations: pd.DataFrame) -> pd.DataFrame:
    """One row per photo/video of `media` (the report's prepared rows of one deployment), with
    its box labels and highest detection confidence from `observations`; times as ISO text
    (Excel has no time zones)."""
    labels = (
        observations.dropna(subset=["label"])
        .groupby("media_id")["label"]
        .agg(lambda s: ";".join(sorted(set(s))))
    )
    best = observations.groupby("media_id")["detection_conf"].max()
    sheet = pd.DataFrame({
        "media_id": media["media_id"], "deployment_id": media["deployment_id"], "file": media["uri"],
        "media_type": media["is_video"].map({True: "video", False: "photo"}),
        "timestamp_utc": media["timestamp"].map(lambda t: t.isoformat() if pd.notna(t) else ""),
        "local_time": media["local_time"].map(lambda t: t.isoformat() if pd.notna(t) else ""),
        "time_zone": media["zone"], "timestamp_issue": media["timestamp_issue"].fillna(""),
        "observation_type": media["observation_type"], "final_label": media["final_label"],
        "machine_label": media["machine_label"], "reviewed_by": media["reviewed_by"],
        "individuals": media["individuals"],
        "event_id": media["event_id"], "event_label": media["event_label"].fillna(""),
        "box_labels": media["media_id"].map(labels).fillna(""),
        "animal_count": media["animal_count"], "person_count": media["person_count"],
        "vehicle_count": media["vehicle_count"],
        "max_detection_conf": media["media_id"].map(best),
        "file_public": media["file_public"],
    })  # fmt: skip
    return sheet.sort_values(["deployment_id", "timestamp_utc", "file"]).reset_index(drop=True)

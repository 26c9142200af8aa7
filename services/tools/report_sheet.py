"""The report's per-photo spreadsheet (`photos.csv`, `photos.xlsx`): one row per photo or video,
for the users who open results in Excel or LibreOffice rather than code.

Kept apart from the HTML page because a season is large: the .xlsx is streamed row by row and
continues on numbered sheets past Excel's row limit (docs/report.md).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

EXCEL_MAX_ROWS = 1_048_576  # rows per worksheet, the header included (Excel's limit)


def write_xlsx(sheet: pd.DataFrame, handle: Any, rows_per_sheet: int = EXCEL_MAX_ROWS - 1) -> int:
    """`sheet` as an .xlsx workbook, streamed row by row (openpyxl's write-only mode: 3x faster
    than pandas' `to_excel` and flat in memory); a season over Excel's row limit continues on
    sheets "photos 2", "photos 3"... Returns the number of worksheets."""
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    header = list(sheet.columns)
    values = sheet.astype(object).where(sheet.notna(), None)  # NaN/NaT: an empty cell
    sheets = 0
    for start in range(0, max(len(values), 1), rows_per_sheet):
        sheets += 1
        page = book.create_sheet("photos" if sheets == 1 else f"photos {sheets}")
        page.append(header)
        for row in values.iloc[start : start + rows_per_sheet].itertuples(index=False, name=None):
            page.append(row)
    book.save(handle)
    return sheets


def photo_sheet(media: pd.DataFrame, observations: pd.DataFrame) -> pd.DataFrame:
    """One row per photo/video; times as ISO text (Excel has no time zones)."""
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

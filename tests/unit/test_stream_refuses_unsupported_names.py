"""The stream refuses an input whose name is not a photo or video at parse time (issue 37,
item 2), as folder runs do: a JPEG named `cam-01/trap.html` holding a script in a comment
segment is a failures row and a dead letter, never a media row a browser could open as a page.
In-memory source (support/memory_kafka.py), real Delta tables on disk."""

from __future__ import annotations

import io
import json
import shutil
from datetime import datetime, timezone

from PIL import Image
from support.memory_kafka import MemoryLog
from support.memory_workers import SAMPLE, TOPIC, worker

from trapline.pipelines.readers import read_table
from trapline.pipelines.uploads import SCHEMA_V1, Upload, encode_upload


def test_a_jpeg_named_html_is_a_failures_row_at_parse_time_never_a_media_row(tmp_path, pipeline):
    card = tmp_path / "card" / "cam-01"
    card.mkdir(parents=True)
    photo = card / "IMG_0001.jpg"
    shutil.copy(sorted((SAMPLE / "deployment-a").glob("*.jpg"))[0], photo)
    hostile = card / "trap.html"
    out = io.BytesIO()
    Image.new("RGB", (64, 48)).save(out, "JPEG", comment=b"<script>alert(1)</script>")
    hostile.write_bytes(out.getvalue())
    log = MemoryLog()
    log.append(TOPIC, 0, encode_upload(Upload(uri=photo.as_uri(), deployment_id="cam-01")))
    event = {  # what a producer that skipped `encode_upload`'s check would send
        "schema": SCHEMA_V1, "uri": hostile.as_uri(), "deployment_id": "cam-01",
        "uploaded_at": datetime.now(timezone.utc).isoformat(),
    }  # fmt: skip
    log.append(TOPIC, 0, json.dumps(event).encode(), key=b"cam-01")
    w = worker(log, tmp_path / "out", pipeline)
    w.run(idle_exit_s=0.5)
    media = read_table(str(tmp_path / "out"), "media").to_pylist()
    failures = read_table(str(tmp_path / "out"), "failures").to_pylist()
    assert [m["uri"] for m in media] == [photo.as_uri()]
    assert [(f["uri"], f["stage"], f["kind"], f["deployment_id"]) for f in failures] == [
        (hostile.as_uri(), "event", "unsupported_type", "cam-01")
    ]
    assert "not a supported photo or video type" in failures[0]["message"]

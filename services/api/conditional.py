"""Create an object only if nothing is at its name yet: the upload API's one atomic step.

"Check, then write" lets two writers that check at the same time both win (two programs both
registering one deployment id, two `complete` calls both storing one upload). A conditional
create leaves the decision to the storage, which sees the writes in order:

- S3 (AWS S3, Ceph RGW, MinIO): PUT with `If-None-Match: *`, answered 412 when the name is
  taken. s3fs's own `mode="create"` only recognises AWS's form of that answer (RGW's carries
  no `Condition` field), so the client is called directly.
- a local folder: a complete temporary file is hard-linked to the name; link(2) fails when the
  name exists, and readers never see a half-written file (O_EXCL would show an empty one).

Other filesystems fall back to check-then-write, with a warning that it is not atomic there.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any

from botocore.exceptions import ClientError
from fsspec.asyn import sync

log = logging.getLogger(__name__)

_CONFLICT_RETRIES = 5  # S3 answers 409 to a conditional PUT racing another one: retry it


def protocol_of(fs: Any) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def create_if_absent(fs: Any, path: str, data: bytes) -> bool:
    """Write `data` at `path` if nothing is there; True if this call created it."""
    protocol = protocol_of(fs)
    parent = path.rsplit("/", 1)[0]
    if protocol in ("s3", "s3a"):
        return _s3_create(fs, path, data)
    fs.makedirs(parent, exist_ok=True)
    if protocol in ("file", "local"):
        temp = f"{parent}/.{uuid.uuid4().hex}.tmp"
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(temp)
    log.warning("%s:// has no conditional create here: %s is checked, then written", protocol, path)
    if fs.exists(path):
        return False
    fs.pipe_file(path, data)
    return True


def _s3_create(fs: Any, path: str, data: bytes) -> bool:
    bucket, key, _ = fs.split_path(path)
    sync(fs.loop, fs.set_session)
    for attempt in range(_CONFLICT_RETRIES):
        try:
            sync(fs.loop, fs.s3.put_object, Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            fs.invalidate_cache(path)
            return True
        except ClientError as error:
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = error.response.get("Error", {}).get("Code")
            if status == 412 or code == "PreconditionFailed":
                return False
            if status == 409 and attempt + 1 < _CONFLICT_RETRIES:  # ConditionalRequestConflict
                time.sleep(0.05 * 2**attempt)
                continue
            raise
    return False  # unreachable: the last attempt returns or raises

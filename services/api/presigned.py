"""Completing a presigned upload: the object checked is the object kept.

A presigned PUT URL stays valid until it expires, whatever the API does, so the object at the
URL's key can change at any moment, also while `complete` reads it. Checking that key and then
moving it would keep whatever bytes were there at the move, possibly not the ones hashed. So:

1. `complete` first creates `_completed/<deployment>/<upload id>` if absent (`create_if_absent`):
   one call per upload id wins, a second (concurrent or later) one is answered 409. The marker
   sits outside `_incoming/`, so a lifecycle rule that expires abandoned uploads there does
   not release a completed id while its URL is still valid;
2. the object is copied server-side to a private key no URL points at (`_incoming/checked/`);
3. that copy is checked (size, type by its bytes, sha256) and moved to its content-addressed
   name; only then is the URL's key deleted.

A PUT with the old URL after that writes an orphan (the marker refuses its completion; a bucket
lifecycle rule on `_incoming/` expires it) and never touches what was checked. A refused or
missing upload releases its marker, so the client may PUT again and complete again.
"""

from __future__ import annotations

import hashlib
import uuid

from trapline.services.api.conditional import create_if_absent
from trapline.services.api.storage import (
    ACCEPTED,
    READ_CHUNK,
    SNIFF_BYTES,
    MediaStore,
    Refused,
    Stored,
    sniff,
)

COMPLETED = "_completed"  # like _incoming, not a valid deployment id


def presigned_path(store: MediaStore, deployment_id: str, upload_id: str) -> str:
    """The key a presigned URL for this upload writes to."""
    return store.incoming_path(f"presigned/{deployment_id}/{upload_id}")


def complete_presigned(
    store: MediaStore, deployment_id: str, upload_id: str, max_bytes: int
) -> Stored:
    """Check one presigned upload and keep exactly the bytes checked (module doc)."""
    key = presigned_path(store, deployment_id, upload_id)
    marker = f"{store.path}/{COMPLETED}/{deployment_id}/{upload_id}"
    if not create_if_absent(store.fs, marker, b""):
        raise Refused(
            409,
            f"upload {upload_id} is completed already (or being completed); its URL takes no "
            "more files: ask for a new one",
        )
    checked = store.incoming_path(f"checked/{uuid.uuid4().hex}")
    try:
        try:
            store.fs.copy(key, checked)
        except FileNotFoundError:
            raise Refused(
                404, "nothing was uploaded to this upload's URL (or it expired)"
            ) from None
        stored = _check_and_store(store, checked, deployment_id, max_bytes)
    except BaseException as error:
        store.delete(checked)
        if isinstance(error, Refused) and error.status != 404:
            store.delete(key)  # a refused object is not kept; the id may be used again
        store.delete(marker)
        raise
    store.delete(key)
    return stored


def _check_and_store(store: MediaStore, path: str, deployment_id: str, max_bytes: int) -> Stored:
    """Size, type by the first bytes and sha256 of the private copy, then its final name.

    The presigned URL could not enforce size or type; this does.
    """
    size = store.fs.size(path)
    if size > max_bytes:
        raise Refused(413, f"{size:,} bytes is more than the {max_bytes:,} allowed per file")
    digest = hashlib.sha256()
    with store.fs.open(path, "rb", block_size=READ_CHUNK) as handle:
        head = handle.read(SNIFF_BYTES)
        sniffed = sniff(head)
        if sniffed is None:
            raise Refused(415, f"not a {ACCEPTED} file (by its first bytes)")
        digest.update(head)
        while chunk := handle.read(READ_CHUNK):
            digest.update(chunk)
    return store.finalize(path, deployment_id, digest.hexdigest(), size, sniffed)

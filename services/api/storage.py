"""The upload API's object storage: stream bytes in, name them by their hash, or hand out URLs.

An upload is written first to `PREFIX/_incoming/<random>` while it is hashed and measured, then
moved to its content-addressed name (`media_store.content_uri`). So a refused or interrupted
upload never sits at a name the pipeline would read, and `discard` removes what was written.
The type comes from the first bytes (`sniff`), never from the file name or the declared
Content-Type; the name is kept only as the event's `original_name` attribute. Presigned uploads
are completed in `presigned.py`.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.asyn import sync

from trapline.services.adapters.media_store import absolute_url, content_uri

log = logging.getLogger(__name__)

SNIFF_BYTES = 12  # enough for every signature below
READ_CHUNK = 1 << 20
INCOMING = "_incoming"  # not a valid deployment id (ids start with a letter or digit)


class Refused(Exception):
    """An upload the API does not take: HTTP `status` and the reason shown to the client."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def sniff(head: bytes) -> tuple[str, str] | None:
    """(media type, extension) from a file's first bytes, or None for anything else."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg", ".jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png", ".png"
    if head[4:8] == b"ftyp":  # ISO base media: MP4, or QuickTime when the brand says so
        return ("video/quicktime", ".mov") if head[8:12] == b"qt  " else ("video/mp4", ".mp4")
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free"):  # older QuickTime files have no ftyp
        return "video/quicktime", ".mov"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video/x-msvideo", ".avi"
    return None


ACCEPTED = "JPEG, PNG, MP4, MOV or AVI"


@dataclass(slots=True)
class Stored:
    """One file at its final, content-addressed place."""

    uri: str  # absolute URL the workers open (in the event only: never shown to a program)
    key: str  # DEPLOYMENT/SHA256.ext below the upload prefix: what a program is shown
    sha256: str
    size: int
    media_type: str
    already_present: bool  # the same bytes were uploaded to this deployment before


class MediaStore:
    """Uploads under one prefix (path or URL); every method is blocking (run it in a thread)."""

    def __init__(self, prefix: str):
        self.prefix = prefix.rstrip("/")
        s3 = self.prefix.split("://", 1)[0].lower() in ("s3", "s3a")
        # No listing cache: other replicas and the presigned PUTs add objects behind its back.
        options = {"use_listings_cache": False} if s3 else {}
        self.fs, self.path = fsspec.core.url_to_fs(self.prefix, **options)
        self.path = self.path.rstrip("/")
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.is_s3 = protocol in ("s3", "s3a")

    def writer(self, max_bytes: int, label: str = "file") -> StreamingUpload:
        return StreamingUpload(self, max_bytes, label)

    def incoming_path(self, name: str) -> str:
        return f"{self.path}/{INCOMING}/{name}"

    def finalize(
        self, temp: str, deployment_id: str, sha256: str, size: int, sniffed: tuple[str, str]
    ) -> Stored:
        """Move a verified temporary object to its content-addressed name."""
        media_type, extension = sniffed
        final = content_uri(self.path, deployment_id, sha256, extension)
        present = self.fs.exists(final) and self.fs.size(final) == size
        if present:
            self.fs.rm(temp)
        else:
            self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            self.fs.mv(temp, final)
        key = final[len(self.path) + 1 :]
        return Stored(absolute_url(self._url(final)), key, sha256, size, media_type, present)

    def delete(self, path: str) -> None:
        """Remove a temporary object; a missing one is fine (nothing was written yet)."""
        try:
            self.fs.rm(path)
        except FileNotFoundError:
            pass

    def received(self, deployment_id: str) -> int:
        """Files stored for a deployment (the listing is the truth; no counter to drift)."""
        folder = f"{self.path}/{deployment_id}"
        self.fs.invalidate_cache(folder)
        try:
            return len(self.fs.ls(folder, detail=False))
        except FileNotFoundError:
            return 0

    # -- presigned uploads ---------------------------------------------------------------------

    def presign_put(self, path: str, expires_s: int) -> str:
        """A presigned S3 PUT URL for `path`, signed with the API's own credentials.

        s3fs only signs GETs (`S3FileSystem.sign`), so this asks its aiobotocore client for a
        `put_object` URL directly; the client carries the endpoint, region and keys of
        `object_store` (path-style on custom endpoints, so Ceph RGW and MinIO accept it).
        """
        if not self.is_s3:
            raise Refused(
                409,
                "presigned uploads need object storage: this server stores uploads in a local "
                "folder (api_upload_prefix); upload with multipart POST instead",
            )
        bucket, key, _ = self.fs.split_path(path)
        sync(self.fs.loop, self.fs.set_session)
        return sync(
            self.fs.loop,
            self.fs.s3.generate_presigned_url,
            ClientMethod="put_object",
            Params={"Bucket": bucket, "Key": key},
            ExpiresIn=expires_s,
        )

    def uri_of(self, key: str) -> str:
        """The absolute URL of a stored `key` (DEPLOYMENT/SHA256.ext): what the workers open."""
        return absolute_url(self._url(f"{self.path}/{key}"))

    def _url(self, path: str) -> str:
        return f"s3://{path}" if self.is_s3 else path


class StreamingUpload:
    """One file arriving in chunks: sniffed, size-capped and hashed while it is written.

    Nothing is written before the first bytes have been sniffed, so a refused type leaves no
    object at all. Over `max_bytes` it raises `Refused(413)` at once; the caller `discard`s.
    """

    def __init__(self, store: MediaStore, max_bytes: int, label: str = "file"):
        self.store = store
        self.max_bytes = max_bytes
        self.label = label  # names the file in refusals: "file 3 ('IMG_0003.JPG')"
        self.temp = store.incoming_path(uuid.uuid4().hex)
        self.size = 0
        self.sniffed: tuple[str, str] | None = None
        self._head = b""
        self._digest = hashlib.sha256()
        self._handle: Any = None
        self.closed = False

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise Refused(
                413, f"{self.label}: larger than the {self.max_bytes:,} bytes allowed per file"
            )
        self._digest.update(data)
        if self.sniffed is None:
            self._head += data
            if len(self._head) < SNIFF_BYTES:
                return
            self._sniff()
            data, self._head = self._head, b""
        self._handle.write(data)

    def close(self) -> tuple[str, int, tuple[str, str]]:
        """Finish the file: (sha256, size, sniffed type); `Refused` if empty or unrecognised."""
        if self.size == 0:
            raise Refused(400, f"{self.label}: empty file")
        if self.sniffed is None:  # shorter than SNIFF_BYTES
            self._sniff()
            self._handle.write(self._head)
        self._handle.close()
        self.closed = True
        return self._digest.hexdigest(), self.size, self.sniffed  # type: ignore[return-value]

    def discard(self) -> None:
        """Abort and remove whatever was written (s3fs: abort the multipart upload)."""
        if self._handle is not None and not self.closed:
            try:
                if self.store.is_s3:
                    # s3fs: abort the multipart upload; the file is unusable after, and marking
                    # it closed stops its __del__ from trying to flush a None buffer.
                    self._handle.discard()
                    self._handle.closed = True
                else:
                    self._handle.close()
            except Exception as error:  # best effort; the object is deleted below anyway
                log.warning("could not abort upload %s: %s", self.temp, error)
        self.closed = True
        if self._handle is not None:
            self.store.delete(self.temp)

    def _sniff(self) -> None:
        self.sniffed = sniff(self._head)
        if self.sniffed is None:
            raise Refused(415, f"{self.label}: not a {ACCEPTED} file (by its first bytes)")
        self.store.fs.makedirs(self.temp.rsplit("/", 1)[0], exist_ok=True)
        self._handle = self.store.fs.open(self.temp, "wb")

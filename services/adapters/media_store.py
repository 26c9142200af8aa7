"""Where uploaded bytes live: content-addressed object names, shared by `submit` and the API.

A photo is stored once per deployment at `{prefix}/{deployment}/{sha256}{ext}`: the name depends
only on the bytes (and the deployment), so uploading the same photo twice writes the same object
and announces the same `media_id`; an uploader's file name never becomes a storage path.
"""

from __future__ import annotations

import fsspec


def content_uri(prefix: str, deployment_id: str, sha256: str, extension: str) -> str:
    """The content-addressed location of a photo (`extension` with its dot, lower case)."""
    return f"{prefix.rstrip('/')}/{deployment_id}/{sha256}{extension.lower()}"


def absolute_url(uri: str) -> str:
    """An absolute URL a worker can open: plain local paths become file:// URLs."""
    if "://" in uri:
        return uri
    fs, path = fsspec.core.url_to_fs(uri)
    return f"file://{fs._strip_protocol(path)}"

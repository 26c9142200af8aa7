"""Which storage a `trapline serve` worker may read, when nobody said: its input and output.

Why a default at all: an upload message is untrusted, and with no roots a worker reads any local
file or bucket an event names (docs/security.md). A service knows where its photos arrive
(`api_upload_prefix`, where the upload API and `trapline submit --copy-to` put them) and where
its tables go (`--out`), so those are the roots unless `storage_roots` is set. An explicitly
empty list is refused at start: it would silently mean "anything". `["*"]` is the explicit way
to say "any local file or bucket" (never http(s)), e.g. for tests that send photos from
temporary folders.
"""

from __future__ import annotations

import os

from trapline.services.settings import Settings

ANY = "*"


class StorageRootsError(ValueError):
    """The configured storage roots cannot be used; the message says what to set."""


def serve_storage_roots(settings: Settings, out: str) -> list[str]:
    """The roots a serve worker enforces: the configured ones, else [upload prefix, out]."""
    if "storage_roots" not in settings.model_fields_set:
        return [_absolute(settings.api_upload_prefix), _absolute(out)]
    roots = list(settings.storage_roots)
    if not roots:
        raise StorageRootsError(
            "storage_roots is an empty list: a worker would read any file or bucket an upload "
            "event names. Set TRAPLINE_STORAGE_ROOTS to the prefixes photos arrive under, e.g. "
            "'[\"s3://camtraps/uploads/\"]', leave it unset for the default (api_upload_prefix "
            "and --out), or set '[\"*\"]' to allow any local file or bucket on purpose."
        )
    if ANY in roots and roots != [ANY]:
        raise StorageRootsError(f"storage_roots {roots}: '*' allows everything; give it alone")
    return roots


def with_serve_roots(settings: Settings, out: str) -> Settings:
    """`settings` with the roots of `serve_storage_roots` (what every worker process gets)."""
    return settings.model_copy(update={"storage_roots": serve_storage_roots(settings, out)})


def _absolute(location: str) -> str:
    """A local path made absolute (workers may run elsewhere than the shell); URLs unchanged."""
    return location if "://" in location else os.path.abspath(location)

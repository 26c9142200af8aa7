"""Which URIs a worker may read: an upload message must not make it read any file or URL it names.

An event is untrusted input: `file:///etc/shadow`, `file:///data/photos/../../root/.ssh/id_rsa`,
`http://169.254.169.254/latest/meta-data/` (a cloud's instance credentials) are all well-formed
URIs. The rules, checked before any byte is read:

- always: no `..` path segment (also percent-encoded), no NUL, local paths absolute; no `::`,
  and in a URL no `#`, and no `?` outside http(s) (a plain local path may hold both): `urlsplit` leaves a fragment or a query out of the path it
  checks, while fsspec opens the whole string (`file://ROOT/x#/../../secret` was read when a
  folder `x#` existed) and reads `::` as a chain of filesystems, so the check and the open
  could see two different paths;
  `http(s)://` never reaches a loopback, private, link-local, multicast or reserved address
  (checked on every address the host name resolves to);
- `storage_roots` empty (the laptop default): any local file and any bucket are readable,
  `http(s)://` is not, and only the protocols in `READABLE_PROTOCOLS`;
- `storage_roots` set (what a service should run with): only URIs below one of them. A local
  root is compared after resolving symlinks, so a link inside a root cannot point out of it.

Limit: a host name is resolved here and again by the HTTP client, so a DNS server that answers
differently the second time (rebinding) is not stopped; give http(s) roots by IP or trust DNS.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
import socket
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from trapline.pipelines.types import StageError

LOCAL = frozenset({"file", "local"})
WEB = frozenset({"http", "https"})
# Object stores and local disk; "memory" is fsspec's in-process store (tests, nothing remote).
READABLE_PROTOCOLS = frozenset(
    {"file", "local", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"}
)
_SAME_STORE = {"s3a": "s3", "gcs": "gs", "abfss": "abfs", "local": "file"}

ANY_ROOT = "*"  # storage_roots: ["*"] = no restriction beyond the always-on rules
_configured: tuple[str, ...] = ()


def configure_storage_roots(roots: Sequence[str]) -> None:
    """Set this process's storage roots (`settings.storage_roots`); `read_bytes` checks them.

    Per process, like fsspec's S3 options: call it where the pipeline is built (each Ray actor).
    Refuses a root that is itself unsafe, so a typo fails at start-up, not on every photo.
    `["*"]` says on purpose what an empty list means: any local file or bucket, no http(s).
    """
    global _configured
    if list(roots) == [ANY_ROOT]:
        _configured = ()
        return
    for root in roots:
        _split(root)  # raises for an unusable root
    _configured = tuple(roots)


def storage_roots() -> tuple[str, ...]:
    return _configured


def check_uri(uri: str, roots: Sequence[str] | None = None) -> None:
    """Raise StageError(kind="forbidden_uri") unless `uri` may be read under `roots`
    (default: this process's configured roots)."""
    roots = _configured if roots is None else tuple(roots)
    protocol, location, path = _split(uri)
    if protocol in WEB:
        if not any(_under(uri, root) for root in roots):
            raise _refused(uri, "http(s) URLs are read only below a configured storage root")
        _check_public_host(uri, location)
        return
    if protocol not in READABLE_PROTOCOLS:
        raise _refused(uri, f"protocol {protocol!r} is not a storage protocol this worker reads")
    if roots and not any(_under(uri, root) for root in roots):
        raise _refused(uri, f"outside the configured storage roots ({', '.join(roots)})")


def _refused(uri: str, why: str) -> StageError:
    return StageError("forbidden_uri", f"{_short(uri)}: refused, {why} (settings.storage_roots)")


def _split(uri: str) -> tuple[str, str, str]:
    """(protocol, bucket or host, path) with the always-on checks applied."""
    if "\x00" in uri:
        raise _refused(uri, "it contains a NUL byte")
    if "::" in re.sub(r"\[[0-9a-fA-F:.%]*\]", "", uri) or ("://" in uri and "#" in uri):
        raise _refused(uri, "'#' and '::' are read differently by the check and the open")
    if "://" not in uri:
        protocol, location, path = "file", "", uri
    else:
        parts = urlsplit(uri)
        protocol, location, path = parts.scheme.lower(), parts.netloc, parts.path
    protocol = _SAME_STORE.get(protocol, protocol)
    if "://" in uri and "?" in uri and protocol not in WEB:
        raise _refused(uri, "'?' is read differently by the check and the open")
    decoded = unquote(path)
    segments = decoded.replace("\\", "/").split("/")
    if ".." in segments:
        raise _refused(uri, "a '..' path segment could climb out of the storage root")
    if protocol == "file":
        if location not in ("", "localhost") or not decoded.startswith("/"):
            raise _refused(uri, "local paths must be absolute (file:///path)")
        path = decoded
    return protocol, location.lower(), path


def _under(uri: str, root: str) -> bool:
    protocol, location, path = _split(uri)
    root_protocol, root_location, root_path = _split(root)
    if (protocol, location) != (root_protocol, root_location):
        return False
    if protocol == "file":
        path, root_path = os.path.realpath(path), os.path.realpath(root_path)
    root_path = root_path.rstrip("/")
    if not root_path:
        return True  # a whole bucket (or /)
    return posixpath.normpath(path).startswith(root_path + "/") or path == root_path


def _check_public_host(uri: str, location: str) -> None:
    host = urlsplit(uri).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (socket.gaierror, UnicodeError) as error:
        raise _refused(uri, f"its host {host!r} does not resolve ({error})") from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global or ip.is_multicast:
            what = (
                "link-local"
                if ip.is_link_local
                else "loopback"
                if ip.is_loopback
                else "private or reserved"
            )
            raise _refused(
                uri, f"its host {host!r} is {what} address {address} (no internal fetches)"
            )


def _short(uri: str, limit: int = 200) -> str:
    return uri if len(uri) <= limit else uri[: limit - 3] + "..."

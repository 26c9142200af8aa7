"""Object storage settings in one place: endpoint, region, credentials and TLS for `s3://` URLs.

The stages never take storage options: `pipelines/source.py` calls `fsspec.open(url)` as it
would for a local path, and `pipelines/delta.py` opens tables by URL. So the
options go where fsspec itself looks for defaults, `fsspec.config.conf["s3"]`, which it applies
to every `s3://` (and `s3a://`) filesystem it creates in this process: the stages and anything
else that goes through fsspec pick them up with no code change. The alternatives were worse:
threading `storage_options` through every stage signature, or exporting `AWS_*` variables,
which leaks the keys into every child process. (pandas' `read_parquet("s3://...")` with no
`storage_options` tries pyarrow's own S3 client first, which ignores fsspec's config: give it
`storage_options=storage_options_for(url, settings)`.)
The Delta tables (delta-rs, Rust) have their own S3 client: `configure_fsspec` hands it the
same settings (`S3Options.delta_options`, set in `pipelines/delta.py`).
It is per process: call `configure_fsspec(settings)` at the start of `run` and `serve` and in
every worker process (a Ray actor's `__init__`), before the first `s3://` URL is opened.

Values come from the settings (`s3_endpoint_url`, `s3_region`, `s3_access_key_id`,
`s3_secret_access_key`, `s3_verify`, `s3_addressing_style`), else from the usual AWS variables;
keys that neither gives are left to botocore's own chain (`AWS_PROFILE` and
`~/.aws/credentials`, EKS web identity, instance metadata). Keys are never logged: `masked()`
is what is shown.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fsspec

from trapline.pipelines import delta

log = logging.getLogger(__name__)

S3_PROTOCOLS = frozenset({"s3", "s3a"})
MASK = "**********"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class S3Options:
    """Where and how to reach S3; `storage_options()` turns it into s3fs keywords."""

    endpoint_url: str | None = None  # None: AWS S3 itself
    region: str | None = None  # None: botocore's default (us-east-1 unless configured)
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    verify: bool | str = True  # False: do not verify TLS certificates; str: a CA bundle file
    addressing_style: str | None = None  # "path" | "virtual" | "auto"; None: see storage_options
    credentials: str = "botocore default chain"  # where the keys come from, for masked()

    @classmethod
    def resolve(
        cls, settings_like: Any = None, environ: Mapping[str, str] | None = None
    ) -> S3Options:
        """Options from `settings_like` (Settings, any object with `s3_*` attributes, a mapping
        or None), falling back on the AWS environment variables for what it leaves unset."""
        env = os.environ if environ is None else environ
        endpoint = (
            _value(settings_like, "s3_endpoint_url")
            or env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL")
        )
        region = (
            _value(settings_like, "s3_region")
            or env.get("AWS_REGION")
            or env.get("AWS_DEFAULT_REGION")
        )
        key = _secret(_value(settings_like, "s3_access_key_id"))
        secret = _secret(_value(settings_like, "s3_secret_access_key"))
        token = _secret(_value(settings_like, "s3_session_token"))
        if bool(key) != bool(secret):
            given, missing = (
                ("s3_access_key_id", "s3_secret_access_key")
                if key
                else ("s3_secret_access_key", "s3_access_key_id")
            )
            raise ValueError(
                f"{given} is set but {missing} is not: set both, or neither to use the AWS credential chain"
            )
        if key:
            source = "settings (s3_access_key_id, s3_secret_access_key)"
        elif env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            # Not copied: botocore reads these itself, so the secret stays in one place.
            source = "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
        elif env.get("AWS_PROFILE"):
            source = f"AWS profile {env['AWS_PROFILE']!r}"
        else:
            source = "botocore default chain"
        return cls(
            endpoint_url=str(endpoint) if endpoint else None,
            region=str(region) if region else None,
            access_key_id=key,
            secret_access_key=secret,
            session_token=token,
            verify=_verify(_value(settings_like, "s3_verify")),
            addressing_style=_value(settings_like, "s3_addressing_style") or None,
            credentials=source,
        )

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for `s3fs.S3FileSystem` (and `storage_options=` of pandas etc.)."""
        options: dict[str, Any] = {}
        client: dict[str, Any] = {}
        config: dict[str, Any] = {}
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.region:
            client["region_name"] = self.region
        if self.access_key_id and self.secret_access_key:
            options["key"] = self.access_key_id
            options["secret"] = self.secret_access_key
            if self.session_token:
                options["token"] = self.session_token
        if self.verify is not True:
            client["verify"] = self.verify
        style = self.addressing_style or ("path" if self.endpoint_url else None)
        if style:
            # S3-compatible servers (Ceph RGW, MinIO) rarely have the wildcard DNS that
            # virtual-hosted URLs (bucket.host) need; path style works on all of them.
            config["s3"] = {"addressing_style": style}
        if self.endpoint_url and _botocore_has_checksum_options():
            # botocore >= 1.36 adds CRC checksums to every upload; over HTTPS it sends them as
            # an aws-chunked trailer, which Ceph RGW 16.2 (and older MinIO) cannot parse: every
            # PUT fails with a bare 400. Checksums only where the API requires them, as before
            # 1.36. Plain HTTP happens to work (header, not trailer); AWS itself keeps defaults.
            config["request_checksum_calculation"] = "when_required"
            config["response_checksum_validation"] = "when_required"
        if client:
            options["client_kwargs"] = client
        if config:
            options["config_kwargs"] = config
        return options

    def delta_options(self) -> dict[str, str]:
        """The same options as delta-rs (Rust object_store) spells them, for the Delta tables.

        Unset keys are left to delta-rs, which reads the usual AWS variables itself. A custom CA
        bundle (`s3_verify` = a file) is not passed: delta-rs trusts the system's roots (add the
        CA there); `s3_verify=false` turns certificate checks off for it too.
        """
        options: dict[str, str] = {}
        if self.endpoint_url:
            options["AWS_ENDPOINT_URL"] = self.endpoint_url
            if self.endpoint_url.startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        if self.region:
            options["AWS_REGION"] = self.region
        elif self.endpoint_url:
            options["AWS_REGION"] = (
                "us-east-1"  # S3-compatible stores accept any; delta-rs wants one
            )
        if self.access_key_id and self.secret_access_key:
            options["AWS_ACCESS_KEY_ID"] = self.access_key_id
            options["AWS_SECRET_ACCESS_KEY"] = self.secret_access_key
            if self.session_token:
                options["AWS_SESSION_TOKEN"] = self.session_token
        style = self.addressing_style or ("path" if self.endpoint_url else None)
        if style in ("path", "virtual"):
            options["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "true" if style == "virtual" else "false"
        if self.verify is False:
            options["AWS_ALLOW_INVALID_CERTIFICATES"] = "true"
        return options

    def masked(self) -> dict[str, str]:
        """What to show at start-up and in logs: everything but the keys."""
        return {
            "endpoint_url": _without_userinfo(self.endpoint_url) if self.endpoint_url else "AWS S3",
            "region": self.region or "(botocore default)",
            "credentials": self.credentials,
            "access_key_id": MASK if self.access_key_id else "(not set here)",
            "secret_access_key": MASK if self.secret_access_key else "(not set here)",
            "verify": str(self.verify),
            "addressing_style": self.addressing_style or ("path" if self.endpoint_url else "auto"),
        }

    def __repr__(self) -> str:
        return f"S3Options({self.masked()})"

    __str__ = __repr__


_configured_from: dict[str, Any] | None = None  # fsspec's own "s3" config before we touched it


def configure_fsspec(settings_like: Any = None) -> S3Options:
    """Make every `s3://` filesystem fsspec creates in this process use these options.

    Idempotent; a later call replaces the earlier options (filesystems are cached by their
    options, so new ones take effect for new `fsspec.open` calls). Options that fsspec read
    from its own config (`FSSPEC_S3_*` variables, ~/.config/fsspec) stay unless overridden.
    Also sets the two checksum variables pyarrow's own S3 filesystem needs against
    S3-compatible servers (unless already set), so `pyarrow.fs.S3FileSystem` works too.
    """
    global _configured_from
    options = S3Options.resolve(settings_like)
    if _configured_from is None:
        _configured_from = dict(fsspec.config.conf.get("s3", {}))
    fsspec.config.conf["s3"] = {**_configured_from, **options.storage_options()}
    delta.set_s3_options(options.delta_options())  # the Delta tables' own S3 client
    if options.endpoint_url:
        # pyarrow (AWS SDK for C++) sends chunked-trailer checksums RGW 16.2 rejects (HTTP 411
        # MissingContentLength on UploadPart); these variables are its only switch.
        os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
        os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    log.debug("object storage (s3://): %s", options.masked())  # describe_storage says it at start
    return options


def describe_storage(url: str, settings_like: Any = None) -> str:
    """One start-up line about where `url` is: the S3 options only when it is on S3."""
    protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
    if protocol in S3_PROTOCOLS:
        return f"{url} on object storage (s3://): {S3Options.resolve(settings_like).masked()}"
    if protocol in ("file", "local"):
        return f"{os.path.abspath(url.split('://', 1)[-1])} (a local folder)"
    return f"{url} ({protocol}://, fsspec)"


def reset_fsspec() -> None:
    """Undo `configure_fsspec` (tests)."""
    global _configured_from
    if _configured_from is not None:
        fsspec.config.conf["s3"] = _configured_from
        if not _configured_from:
            del fsspec.config.conf["s3"]
        _configured_from = None
    delta.set_s3_options(None)


def storage_options_for(url: str, settings_like: Any = None) -> dict[str, Any]:
    """Explicit fsspec `storage_options` for `url`: the S3 options for `s3://`, else none."""
    protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
    if protocol in S3_PROTOCOLS:
        return S3Options.resolve(settings_like).storage_options()
    return {}


def _value(settings_like: Any, name: str) -> Any:
    if settings_like is None:
        return None
    if isinstance(settings_like, Mapping):
        return settings_like.get(name)
    return getattr(settings_like, name, None)


def _secret(value: Any) -> str | None:
    """The plain value of a pydantic SecretStr (or a str); None when unset or empty."""
    if value is None:
        return None
    plain = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return plain or None


def _verify(value: Any) -> bool | str:
    """`s3_verify`: a bool, a bool spelt as text (environment variables), or a CA bundle path."""
    if value is None or isinstance(value, bool):
        return True if value is None else value
    text = str(value).strip()
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    if not os.path.isfile(text):
        raise ValueError(f"s3_verify={text!r}: no such CA bundle file (or use true/false)")
    return text


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _botocore_has_checksum_options() -> bool:
    try:
        from botocore.config import Config
    except ImportError:  # s3fs not installed: nothing will read these options anyway
        return False
    return "request_checksum_calculation" in getattr(Config, "OPTION_DEFAULTS", {})

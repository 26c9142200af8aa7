"""Fixtures for tests against a real S3 server: Ceph's RGW, started once per test session.

Import them into a test module (tests/ is on sys.path):

    from support.s3_fixtures import ceph_rgw, s3, s3_bucket, s3_settings  # noqa: F401

The tests skip, saying why, only when the Ceph programs are not installed
(`scripts/install_ceph.sh` installs them; CI runs it first). Any other start-up failure fails
the tests with the daemons' log tails.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import fsspec
import pytest

from trapline.services.adapters import object_store
from trapline.services.devstack.ceph import CephRGW, missing_ceph_programs, start_ceph_rgw


@pytest.fixture(scope="session")
def ceph_rgw() -> Iterator[CephRGW]:
    """One throwaway Ceph cluster + RGW (objects in memory) for the whole session; it also
    serves HTTPS with a self-signed certificate (`tls_endpoint_url`, `ca_file`)."""
    missing = missing_ceph_programs()
    if missing:
        pytest.skip(f"Ceph is not installed (no {', '.join(missing)}): run scripts/install_ceph.sh")
    with start_ceph_rgw(tls=True) as server:
        yield server


@pytest.fixture(scope="session")
def s3_settings(ceph_rgw: CephRGW) -> SimpleNamespace:
    """The `s3_*` settings that point at the test gateway (what Settings will carry)."""
    return SimpleNamespace(
        s3_endpoint_url=ceph_rgw.endpoint_url,
        s3_region=ceph_rgw.region,
        s3_access_key_id=ceph_rgw.access_key,
        s3_secret_access_key=ceph_rgw.secret_key,
        s3_verify=True,
    )


@pytest.fixture
def s3(s3_settings: SimpleNamespace) -> Iterator[Any]:
    """fsspec configured for the gateway (as `run`/`serve` will do); the s3fs filesystem that
    every `s3://` URL now gets. fsspec's global config is restored afterwards."""
    object_store.configure_fsspec(s3_settings)
    try:
        yield fsspec.filesystem("s3")
    finally:
        object_store.reset_fsspec()


@pytest.fixture
def s3_bucket(s3: Any) -> Callable[[str], str]:
    """Factory: `s3_bucket("photos")` creates a bucket with a unique name and returns it."""

    def make(prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        s3.mkdir(name)
        return name

    return make

"""Every process that touches the tables puts pyarrow on jemalloc (pipelines/delta.py
`use_lean_arrow_pool`), unless the operator chose a pool with ARROW_DEFAULT_MEMORY_POOL."""

import os
import subprocess
import sys

import pyarrow as pa

PROBE = "import trapline.pipelines.readers, pyarrow as pa; print(pa.default_memory_pool().backend_name)"


def _pool_in_a_fresh_process(**env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**environment, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_reading_the_tables_uses_jemalloc_where_pyarrow_has_it():
    try:
        pa.jemalloc_memory_pool()
        expected = "jemalloc"
    except NotImplementedError:
        expected = "system"
    assert _pool_in_a_fresh_process() == expected


def test_the_operators_choice_wins():
    assert _pool_in_a_fresh_process(ARROW_DEFAULT_MEMORY_POOL="mimalloc") == "mimalloc"
    assert _pool_in_a_fresh_process(ARROW_DEFAULT_MEMORY_POOL="system") == "system"

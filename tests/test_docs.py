from pathlib import Path

from trapline.services.docs import table_reference


def test_table_reference_in_docs_is_current():
    """docs/tables.md is generated from the schemas; regenerate with `trapline tables-doc`."""
    committed = (Path(__file__).resolve().parent.parent / "docs" / "tables.md").read_text()
    assert committed == table_reference()

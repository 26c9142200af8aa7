from pathlib import Path

from trapline.services.tools.tables_doc import documentation_pages

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_table_reference_in_docs_is_current():
    """docs/tables.md and docs/tables/*.md come from the schemas; regenerate with `trapline tables-doc`."""
    for relative, text in documentation_pages().items():
        assert (DOCS / relative).read_text() == text, (
            f"docs/{relative} is stale: run `trapline tables-doc`"
        )

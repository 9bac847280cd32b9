"""The README's state diagrams are the tables the code obeys (generated, then checked here)."""
import os

from agent import transitions

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _block(begin, end):
    with open(README, encoding="utf-8") as f:
        text = f.read()
    assert text.count(begin) == 1 and text.count(end) == 1, f"README needs one {begin}"
    inner = text[text.index(begin) + len(begin):text.index(end)].strip()
    assert inner.startswith("```") and inner.endswith("```"), inner[:80]
    return inner[3:-3].strip().splitlines()


def test_readme_migration_diagram_is_table_text():
    lines = _block("<!-- transitions.table_text() -->", "<!-- end of transitions.table_text() -->")
    assert lines == transitions.table_text(), (
        "README's state table is stale: paste transitions.table_text() between the markers")

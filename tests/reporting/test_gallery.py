"""The web pages of a run folder: a summary page, one page per space, links to what exists."""

from __future__ import annotations

from pathlib import Path

from connectivity.reporting.gallery import gallery_pages
from tests.reporting.folders import NAMES, line_records


def test_the_gallery_has_a_summary_page_a_page_per_space_and_links_only_drawn_figures(
    tmp_path: Path,
) -> None:
    linear, crossing = line_records()
    latent = [{**r, "space": "layer"} for r in (linear, crossing)]
    manifest = {"name": "demo", "class_names": NAMES, "pairs": [0, 1]}
    drawn = tmp_path / "figures" / "input" / "pair_0000.png"  # only the linear pair's figure
    drawn.parent.mkdir(parents=True)
    drawn.write_bytes(b"png")
    table = "Pairs: 2.\n\n| | input | layer |\n|---|---|---|\n| Linear path exists | 1 | 1 |\n"
    pages = gallery_pages({"input": [linear, crossing], "layer": latent}, manifest, tmp_path, table)
    assert set(pages) == {"index.html", "index_input.html", "index_layer.html"}
    index = pages["index.html"]
    for link in ("table.md", "table.csv", "pairs.csv", "index_input.html", "index_layer.html"):
        assert f"href='{link}'" in index
    assert "<td>Linear path exists</td><td>1</td>" in index  # table.md as an HTML table
    assert "1 of 2 figures drawn" in index and "0 of 2 figures drawn" in index
    page = pages["index_input.html"]
    assert "href='index.html'" in page and "href='index_layer.html'" in page
    assert "src='figures/input/pair_0000.png'" in page
    assert "pair_0001.png" not in page  # no file: the pair is a caption line, and how to draw it
    assert page.index("No path found: 1") < page.index("Linear path exists: 1")
    assert "pair 1 (items 11 &rarr; 21)" in page and "--figures all" in page
    assert "sampled check" in page
    assert "<img" not in pages["index_layer.html"]


def test_markup_in_names_and_tables_is_shown_as_text(tmp_path: Path) -> None:
    linear, crossing = line_records()
    manifest = {"name": "<b>run</b>", "class_names": ["<zero>", "one"], "pairs": [0, 1]}
    table = "| | input |\n|---|---|\n| <i>row</i> | 1 |\nA note & more\n"
    pages = gallery_pages({"input": [linear, crossing]}, manifest, tmp_path, table)
    assert (
        "<b>run</b>" not in pages["index.html"] and "&lt;b&gt;run&lt;/b&gt;" in pages["index.html"]
    )
    assert "<td>&lt;i&gt;row&lt;/i&gt;</td>" in pages["index.html"]
    assert "<p>A note &amp; more</p>" in pages["index.html"]
    assert "class &lt;zero&gt;" in pages["index_input.html"]

"""The web pages of a path run folder: ``index.html`` (the verdict table, the spaces) and one
page per space (its pairs by verdict, each by its figure where the folder holds one)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any
from urllib.parse import quote

from connectivity.reporting.baselines import BASELINES_CSV, BASELINES_FIGURE
from connectivity.reporting.detect import DETECT_FIGURE, DETECT_FILES
from connectivity.reporting.figures import lowest_margin
from connectivity.reporting.tables import ROW_NAMES, count_verdicts, ends_text, verdict_sentence
from connectivity.store.records import figure_name

# The gallery shows what needs a look first: no path, diverged, bent paths, then straight ones.
GALLERY_ORDER = ("none", "diverged", "nonlinear", "linear")
DRAW_ALL = "connectivity report &lt;run folder&gt; --figures all"
_STYLE = (
    "<style>body{font-family:sans-serif;max-width:1400px} figure{display:inline-block;"
    "margin:6px;width:440px;vertical-align:top} img{width:100%} figcaption{font-size:12px}"
    " table{border-collapse:collapse} td,th{border:1px solid #bbb;padding:3px 8px}"
    " ul.nofig{font-size:13px} nav{margin:8px 0}</style>"
)


def space_page(space: str) -> str:
    """The file name of a space's gallery page in the run folder."""
    return f"index_{space}.html"


def _markdown_html(text: str) -> str:
    """``table.md`` as HTML: its pipe table as a table (first row the header), other lines as
    paragraphs."""
    out: list[str] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if not rows:
            return
        head, *body = rows
        out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
        for row in body:
            out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        out.append("</table>")
        rows.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            cells = [c.strip() for c in stripped.strip("|").split("|")]
            if not all(c and set(c) <= set("-: ") for c in cells):  # not the separator row
                rows.append(cells)
            continue
        flush()
        if stripped:
            out.append(f"<p>{html.escape(stripped)}</p>")
    flush()
    return "\n".join(out)


def _caption(record: dict[str, Any], class_names: list[str]) -> str:
    pair = record["pair"]
    name = html.escape(str(class_names[record["target"]]))
    return (
        f"pair {pair['id']} ({ends_text(pair, '&rarr;')}), class "
        f"{name}: {html.escape(verdict_sentence(record))}"
    )


def _drawn(folder: Path, space: str, records: list[dict[str, Any]]) -> set[int]:
    """Ids of the pairs of ``space`` whose figure file exists in ``folder``."""
    ids = (r["pair"]["id"] for r in records)
    return {i for i in ids if (folder / figure_name(space, i)).is_file()}


def _link(file: str, text: str) -> str:
    return f"<a href='{html.escape(quote(file))}'>{html.escape(text)}</a>"


# A run's summaries beside its table, where it has them: the untrained baseline's comparison
# (reporting/baselines.py) and the detector of adversarial ends (reporting/detect.py).
SUMMARY_FILES = (BASELINES_CSV, *DETECT_FILES)
SUMMARY_FIGURES = (BASELINES_FIGURE, DETECT_FIGURE)


def gallery_pages(
    by_space: dict[str, list[dict[str, Any]]],
    manifest: dict[str, Any],
    folder: Path,
    table: str,
) -> dict[str, str]:
    """The web pages of a run folder, ``{file name: HTML}``.

    ``index.html``: the verdict table (``table``, the text of ``table.md``), links to
    ``table.md``, ``table.csv`` and ``pairs.csv``, and per space its verdict counts, how many
    of its figures are drawn and a link to its page. ``index_<space>.html`` (see
    :func:`space_page`): links to the summary and the other spaces' pages, then the space's
    pairs by verdict (no path found and diverged first, then nonlinear, then linear), closest
    calls (lowest target margin) first. A pair is shown by its figure where its file
    (:func:`figure_name` under ``folder``) exists, else by its caption alone, with the command
    that draws it: which figures were drawn is read from the folder, nothing else.

    Args:
        by_space: The records, by space (:meth:`RunStore.load_all`).
        manifest: The run's ``run.json``.
        folder: The run folder (where the figures are looked for).
        table: The verdict table as Markdown.
    """
    class_names = manifest["class_names"]
    name = html.escape(str(manifest.get("name", "paths")))
    head = f"<!doctype html><meta charset='utf-8'><title>{name}</title>{_STYLE}"
    drawn = {space: _drawn(folder, space, records) for space, records in by_space.items()}
    index = [
        head,
        f"<h1>{name}: {len(manifest['pairs'])} pairs in {len(by_space)} spaces</h1>",
        "<p>Files: "
        + ", ".join(_link(f, f) for f in ("table.md", "table.csv", "pairs.csv"))
        + " (one row per pair and space, with its figure's file)"
        + "".join(f", {_link(f, f)}" for f in SUMMARY_FILES if (folder / f).is_file())
        + ".</p>",
        _markdown_html(table),
        *(
            f"<p><img src='{f}' alt='{f}' style='max-width:100%'></p>"
            for f in SUMMARY_FIGURES
            if (folder / f).is_file()
        ),
        "<p>Verdicts rest on the check named in each caption: <em>sampled</em> checks a fixed "
        "number of points along the path; between them the class can change. <em>No path "
        "found</em> is not <em>no path exists</em>.</p>",
        "<h2>Spaces</h2><ul>",
    ]
    for space, records in by_space.items():
        counts = count_verdicts(records)
        said = ", ".join(f"{counts[v]} {v}" for v in GALLERY_ORDER)
        index.append(
            f"<li>{_link(space_page(space), space)}: {said}; {len(drawn[space])} of "
            f"{len(records)} figures drawn</li>"
        )
    index.append("</ul>")
    if any(len(drawn[s]) < len(rs) for s, rs in by_space.items()):
        index.append(f"<p>To draw every figure: <code>{DRAW_ALL}</code>.</p>")
    pages = {"index.html": "\n".join(index) + "\n"}

    for space, records in by_space.items():
        nav = [_link("index.html", "summary")] + [
            f"<b>{html.escape(s)}</b>" if s == space else _link(space_page(s), s) for s in by_space
        ]
        parts = [
            head,
            "<nav>" + " | ".join(nav) + "</nav>",
            f"<h1>{html.escape(space)}: {len(records)} pairs, {len(drawn[space])} figures</h1>",
        ]
        for verdict in GALLERY_ORDER:
            chosen = sorted((r for r in records if r["verdict"] == verdict), key=lowest_margin)
            if not chosen:
                continue
            parts.append(f"<h2>{html.escape(ROW_NAMES[verdict])}: {len(chosen)}</h2>")
            without = []
            for record in chosen:
                caption = _caption(record, class_names)
                if record["pair"]["id"] not in drawn[space]:
                    without.append(f"<li>{caption}</li>")
                    continue
                file = html.escape(quote(figure_name(space, record["pair"]["id"])))
                parts.append(
                    f"<figure><a href='{file}'><img src='{file}' loading='lazy'></a>"
                    f"<figcaption>{caption}</figcaption></figure>"
                )
            if without:
                parts.append(
                    f"<p>{len(without)} without a figure (draw them with <code>{DRAW_ALL}"
                    "</code>):</p><ul class='nofig'>" + "".join(without) + "</ul>"
                )
        pages[space_page(space)] = "\n".join(parts) + "\n"
    return pages

"""A small report for the ``report.html`` tests (``test_report_html``, ``test_report_browser``).

:func:`write_report` writes its pieces into a folder (two matplotlib figures through
:func:`~robustlab.core.plots.write_figure`, so each PNG has an SVG twin, and another report
with an HTML sibling) and returns its Markdown. The constants state what the page must show,
taken from that input, never from the page. :func:`parse_html` reads a page into a small tree
with the standard library's HTML parser, so the checks do not go through the code under test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from robustlab.analysis.figures import pyplot
from robustlab.core.plots import write_figure

TITLE = "Toy report (toy profile)"
SECTIONS = ["Clean and PGD accuracy", "Verdict"]
TABLE_HEADER = ["model", "clean (%)", "PGD (%)"]
TABLE_ROWS = [["trained", "99.00 ± 0.10 (1/1)", "10.00"],
              ["untrained", "10.00 ± 0.00 (1/1)", "9.00"],
              ["half", "55.50", "30.25"]]
VERDICTS = {  # claim -> (verdict text, the class its cell must carry)
    "Training beats no training": ("held", "verdict-held"),
    "No training beats training": ("did not hold", "verdict-failed"),
    "Half beats trained": ("not shown at this sample size", "verdict-unclear"),
}
FIGURES = {"first figure": "figs/first.png", "second figure": "figs/second.png"}  # alt -> file


def write_report(folder: Path, extra: str = "") -> str:
    """Write the report's figures and linked report into ``folder``; return its Markdown (with
    ``extra`` appended)."""
    plt = pyplot()
    for i, file in enumerate(FIGURES.values()):
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot([0, 1, 2], [1, 3 - i, 2], marker="o", label=f"series {i}")
        ax.legend()
        ax.set_title(f"figure {i} & <{i}>")
        write_figure(fig, folder / file, dpi=60)
        plt.close(fig)
    (folder / "other").mkdir(exist_ok=True)
    (folder / "other" / "report.md").write_text("# Other\n")
    (folder / "other" / "report.html").write_text("<!DOCTYPE html><title>Other</title>")
    table = "\n".join("| " + " | ".join(row) + " |" for row in [TABLE_HEADER, ["---"] * 3, *TABLE_ROWS])
    verdicts = "\n".join(f"| {claim} | toy | **{text}** |" for claim, (text, _) in VERDICTS.items())
    figures = "\n\n".join(f"![{alt}]({file})" for alt, file in FIGURES.items())
    return (f"# {TITLE}\n\nA toy study; see [the other study](other/report.md) and `robustlab run`.\n\n"
            f"## {SECTIONS[0]}\n\n{table}\n\n{figures}\n\n"
            f"## {SECTIONS[1]}\n\n| claim | paper | verdict |\n|---|---|---|\n{verdicts}\n\n{extra}")


@dataclass
class Node:
    """An element of a parsed page: tag, attributes and content (text and child nodes, in order)."""

    tag: str
    attrs: dict[str, str]
    content: list[Node | str] = field(default_factory=list)

    @property
    def children(self) -> list[Node]:
        return [c for c in self.content if isinstance(c, Node)]

    def text(self) -> str:
        """All the text inside, whitespace collapsed."""
        parts = [c if isinstance(c, str) else c.text() for c in self.content]
        return " ".join("".join(parts).split())

    def iter(self, tag: str | None = None) -> Iterator[Node]:
        """This node and every node inside, depth first; only those named ``tag`` when given."""
        if tag is None or self.tag == tag:
            yield self
        for child in self.children:
            yield from child.iter(tag)

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class _TreeBuilder(HTMLParser):
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].content.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].content.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].content.append(data)


def parse_html(text: str) -> Node:
    """``text`` as a tree of :class:`Node` (root ``#document``)."""
    builder = _TreeBuilder()
    builder.feed(text)
    builder.close()
    return builder.root


def table_with_header(root: Node, header: list[str]) -> Node:
    """The one ``<table>`` of ``root`` whose header cells read ``header``."""
    found = [t for t in root.iter("table") if [th.text() for th in t.iter("th")] == header]
    assert len(found) == 1, f"{len(found)} tables with header {header}"
    return found[0]


def body_rows(table: Node) -> list[list[str]]:
    """The texts of the cells of each ``<tbody>`` row."""
    return [[td.text() for td in tr.iter("td")] for body in table.iter("tbody") for tr in body.iter("tr")]

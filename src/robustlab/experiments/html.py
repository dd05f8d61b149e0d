"""A report as one self-contained HTML page: ``report.html`` beside ``report.md``.

:func:`write_html` converts the report's Markdown with Python-Markdown (pipe tables, headings,
code, links, images) and renders it into the Jinja2 template ``templates/report.html.j2``. The
page needs nothing but itself: no network, no external CSS, fonts or scripts. Two tree
processors work on the converted document (an ElementTree, not its text):

- :class:`FigureInliner` replaces each image by its content: a PNG with an SVG twin (same stem,
  :func:`~robustlab.core.plots.svg_twin`) or an SVG becomes an inline ``<svg>`` whose ids are
  prefixed per figure (matplotlib reuses clip-path, marker and glyph ids across files); any other
  image becomes a ``data:`` URI; a missing one a visible note. Links to another report's ``.md``
  point at its ``.html`` sibling when that exists.
- :class:`VerdictMarker` gives table cells that start with a verdict a class the page colours:
  ``verdict-held`` (green), ``verdict-failed`` (red), ``verdict-unclear`` (amber).
"""

from __future__ import annotations

import base64
import functools
import html
import mimetypes
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import markdown
from jinja2 import Environment, PackageLoader, Template
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor
from markupsafe import Markup

from ..core.checkpoint import write_text_atomic
from ..core.plots import svg_twin

__all__ = ["VERDICT_CLASSES", "FigureInliner", "TableWrapper", "VerdictMarker", "first_heading", "inline_svg",
           "render_html", "write_html"]

#: How a cell's opening words map to a class (matched case-insensitively, as whole words).
VERDICT_CLASSES: dict[str, str] = {
    "held": "verdict-held",
    "trustworthy": "verdict-held",
    "did not hold": "verdict-failed",
    "unreliable": "verdict-failed",
    "broken evaluation": "verdict-failed",
    "not shown": "verdict-unclear",
    "inconclusive": "verdict-unclear",
    "no records": "verdict-unclear",
    "suspect": "verdict-unclear",
}
_VERDICT = re.compile(r"\s*(" + "|".join(sorted(map(re.escape, VERDICT_CLASSES), key=len, reverse=True))
                      + r")\b", re.IGNORECASE)
_SVG_NS, _XLINK_NS = "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"
_URL_REF = re.compile(r"url\(\s*#([^)\s]+)\s*\)")


def write_html(path: Path, markdown_text: str, *, title: str, base: Path | None = None) -> Path:
    """Write ``markdown_text`` as the self-contained page ``path``, atomically.

    Args:
        path: the HTML file to write (its folder must exist).
        markdown_text: the report, in Markdown.
        title: the page's title (a leading ``# title`` heading of the text is not repeated).
        base: the folder the report's relative image and link paths start from (default:
            ``path``'s folder).

    Returns:
        ``path``.
    """
    path = Path(path)
    page = render_html(markdown_text, title=title, base=path.parent if base is None else Path(base))
    return write_text_atomic(path, page)


def first_heading(markdown_text: str, default: str = "Report") -> str:
    """The text of the first ATX heading (``# ...``, any level) of ``markdown_text``, else ``default``."""
    for line in markdown_text.splitlines():
        match = re.match(r"#{1,6}\s+(.*?)(?:\s+#+)?\s*$", line)
        if match and match[1]:
            return match[1]
    return default


def render_html(markdown_text: str, *, title: str, base: Path) -> str:
    """The page :func:`write_html` writes, as a string (see there for the arguments)."""
    md = markdown.Markdown(extensions=["tables", "fenced_code", "sane_lists", "toc", _ReportExtension(base, title)])
    body = md.convert(markdown_text)
    marker = cast(VerdictMarker, md.treeprocessors["robustlab-verdicts"])
    headings = _flatten(getattr(md, "toc_tokens", []))
    sections = [(t["id"], html.unescape(t["name"])) for t in headings if t["level"] == 2]
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return _template().render(title=title, generated=generated, sections=sections, body=Markup(body),
                              legend=bool(marker.found))


@functools.lru_cache(maxsize=1)
def _template() -> Template:
    """The page template, shipped as package data; autoescaped."""
    env = Environment(loader=PackageLoader("robustlab.experiments", "templates"), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2")


def _flatten(tokens: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``toc`` extension's nested heading tokens, in document order."""
    out: list[dict[str, Any]] = []
    for t in tokens:
        out += [t, *_flatten(t.get("children", []))]
    return out


class _ReportExtension(Extension):
    """Registers this module's tree processors, to run after inline parsing and before ``toc``."""

    def __init__(self, base: Path, title: str) -> None:
        super().__init__()
        self.base, self.title = base, title

    def extendMarkdown(self, md: markdown.Markdown) -> None:
        md.treeprocessors.register(FigureInliner(md, self.base, self.title), "robustlab-figures", 15)
        md.treeprocessors.register(VerdictMarker(md), "robustlab-verdicts", 14)
        md.treeprocessors.register(TableWrapper(md), "robustlab-tables", 13)


class FigureInliner(Treeprocessor):
    """Inline every ``<img>`` of the document and point ``.md`` links at their ``.html`` twin.

    Args:
        md: the Markdown instance.
        base: the folder relative paths start from.
        title: a first ``<h1>`` with this text is removed (the page template shows the title).
    """

    def __init__(self, md: markdown.Markdown, base: Path, title: str) -> None:
        super().__init__(md)
        self.base, self.title, self.figures = base, title, 0

    def run(self, root: ET.Element) -> None:
        """Rewrite ``root`` in place."""
        first = next(iter(root), None)
        if first is not None and first.tag == "h1" and "".join(first.itertext()).strip() == self.title.strip():
            root.remove(first)
        for parent in list(root.iter()):
            for i, child in enumerate(list(parent)):
                if child.tag == "img":
                    replacement = self._figure(child)
                    replacement.tail = child.tail
                    parent.remove(child)
                    parent.insert(i, replacement)
                elif child.tag == "a":
                    self._relink(child)

    def _local(self, ref: str) -> Path | None:
        """The file a relative reference names, or ``None`` for a URL or an absolute path."""
        parts = urlsplit(ref)
        if parts.scheme or parts.netloc or not parts.path or parts.path.startswith("/"):
            return None
        return self.base / unquote(parts.path)

    def _figure(self, img: ET.Element) -> ET.Element:
        """What replaces ``img``: an inline ``<svg>``, an ``<img>`` with a ``data:`` URI or a note."""
        src, alt = img.get("src", ""), img.get("alt", "")
        file = self._local(src)
        if file is None:  # a URL (data: included) or an absolute path: left as it is
            return img
        if file.suffix.lower() == ".png" and svg_twin(file).is_file():
            file = svg_twin(file)
        if not file.is_file():
            note = ET.Element("span", {"class": "missing-figure"})
            note.text = f"(figure {src} not found)"
            return note
        if file.suffix.lower() == ".svg":
            self.figures += 1
            return inline_svg(file.read_bytes(), f"fig{self.figures}-", alt)
        mime = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        img.set("src", f"data:{mime};base64,{base64.b64encode(file.read_bytes()).decode('ascii')}")
        return img

    def _relink(self, a: ET.Element) -> None:
        """Point a link to a local ``.md`` file at its ``.html`` sibling when that exists."""
        href = a.get("href", "")
        file = self._local(href)
        if file is None or file.suffix.lower() != ".md" or not file.with_suffix(".html").is_file():
            return
        path, sep, fragment = href.partition("#")
        a.set("href", path[: -len(".md")] + ".html" + sep + fragment)


def inline_svg(data: bytes, prefix: str, label: str) -> ET.Element:
    """An SVG file as an element to place in an HTML tree.

    Namespaces become plain tag names (``xlink:href`` stays as written), the ``<metadata>`` goes,
    every ``id`` gets ``prefix`` and so does every reference to one (``url(#id)``, ``href="#id"``),
    and the root gets ``role="img"``, ``aria-label`` = ``label`` and the class ``figure``.
    """
    root = ET.fromstring(data)
    for el in root.iter():
        if isinstance(el.tag, str):
            el.tag = el.tag.rpartition("}")[2]
        for key in [k for k in el.attrib if k.startswith("{")]:
            ns, _, local = key[1:].partition("}")
            el.set(f"xlink:{local}" if ns == _XLINK_NS else local, el.attrib.pop(key))
    for parent in list(root.iter()):
        for child in [c for c in parent if c.tag == "metadata"]:
            parent.remove(child)
    ids = {el.get("id") for el in root.iter()} - {None}
    for el in root.iter():
        for key, value in el.attrib.items():
            if key == "id":
                el.set(key, prefix + value)
            elif key in ("href", "xlink:href") and value.startswith("#") and value[1:] in ids:
                el.set(key, "#" + prefix + value[1:])
            elif "url(" in value:
                el.set(key, _URL_REF.sub(lambda m: f"url(#{prefix}{m[1]})" if m[1] in ids else m[0], value))
    root.set("xmlns", _SVG_NS)
    if any("xlink:href" in el.attrib for el in root.iter()):
        root.set("xmlns:xlink", _XLINK_NS)
    root.set("role", "img")
    root.set("aria-label", label)
    root.set("class", " ".join(filter(None, [root.get("class"), "figure"])))
    return root


class VerdictMarker(Treeprocessor):
    """Give each ``<td>`` whose text starts with a verdict its class (:data:`VERDICT_CLASSES`);
    ``found`` counts the cells marked."""

    def __init__(self, md: markdown.Markdown) -> None:
        super().__init__(md)
        self.found = 0

    def run(self, root: ET.Element) -> None:
        """Mark the cells of ``root`` in place."""
        for td in root.iter("td"):
            match = _VERDICT.match("".join(td.itertext()))
            if match is None:
                continue
            td.set("class", " ".join(filter(None, [td.get("class"), VERDICT_CLASSES[match[1].lower()]])))
            self.found += 1


class TableWrapper(Treeprocessor):
    """Put each ``<table>`` in a ``<div class="table-wrap">``, which scrolls a wide or long table
    under its sticky header instead of the page."""

    def run(self, root: ET.Element) -> None:
        """Wrap the tables of ``root`` in place."""
        for parent in list(root.iter()):
            for i, child in enumerate(list(parent)):
                if child.tag == "table":
                    wrap = ET.Element("div", {"class": "table-wrap"})
                    wrap.tail, child.tail = child.tail, None
                    parent.remove(child)
                    wrap.append(child)
                    parent.insert(i, wrap)

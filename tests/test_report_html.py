"""``report.html``: a report's Markdown as one self-contained page (no browser here; see
``test_report_browser``). The page is read back with the standard library's HTML parser and
checked against the input the test wrote (:mod:`report_pages`)."""

from __future__ import annotations

import base64
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from report_pages import (
    FIGURES,
    SECTIONS,
    TABLE_HEADER,
    TABLE_ROWS,
    TITLE,
    VERDICTS,
    Node,
    body_rows,
    parse_html,
    table_with_header,
    write_report,
)

from robustlab.analysis.figures import pyplot
from robustlab.experiments import html as html_module
from robustlab.experiments.claims import Claim, Side
from robustlab.experiments.columns import Column
from robustlab.experiments.html import first_heading, write_html
from robustlab.experiments.records import Record, RecordStore
from robustlab.experiments.report import Cell, Plot, Table
from robustlab.experiments.study import Plan, Profile, Study, StudyConfig, run_study
from robustlab.experiments.variants import Load, Variant

URL = re.compile(r"^\s*https?://", re.IGNORECASE)
REF = re.compile(r"url\(#([^)]+)\)")


def page(folder: Path, extra: str = "") -> tuple[Path, Node]:
    """Write the toy report's page into ``folder``; its path and parsed tree."""
    out = write_html(folder / "report.html", write_report(folder, extra), title=TITLE)
    assert out == folder / "report.html"
    return out, parse_html(out.read_text(encoding="utf-8"))


@pytest.fixture
def toy(tmp_path: Path) -> tuple[Path, Node]:
    return page(tmp_path)


def main_of(root: Node) -> Node:
    (main,) = list(root.iter("main"))
    return main


def test_the_table_has_its_rows(toy):
    _, root = toy
    assert body_rows(table_with_header(root, TABLE_HEADER)) == TABLE_ROWS


def test_each_verdict_cell_carries_its_class_and_the_legend_shows(toy):
    _, root = toy
    table = table_with_header(root, ["claim", "paper", "verdict"])
    rows = {tr.children[0].text(): tr.children[2] for tr in table.iter("tr") if tr.children[0].tag == "td"}
    assert set(rows) == set(VERDICTS)
    for claim, (text, cls) in VERDICTS.items():
        assert rows[claim].text() == text
        assert cls in rows[claim].classes(), (claim, rows[claim].attrs)
    assert len({cls for _, cls in VERDICTS.values()}) == 3
    others = [td for td in root.iter("td") if td not in rows.values()]
    assert not any(c.startswith("verdict-") for td in others for c in td.classes())  # numbers stay plain
    legend = [n for n in root.iter() if "legend" in n.classes()]
    assert len(legend) == 1 and {"verdict-held", "verdict-failed", "verdict-unclear"} <= {
        c for n in legend[0].iter() for c in n.classes()}


def test_audit_verdicts_are_coloured_too_and_no_legend_without_verdicts(tmp_path):
    text = "# A\n\n| model | audit |\n|---|---|\n| m1 | TRUSTWORTHY |\n| m2 | suspect (2 flags) |\n| m3 | UNRELIABLE |\n"
    root = parse_html(write_html(tmp_path / "a.html", text, title="A").read_text())
    assert [sorted(td.classes()) for td in root.iter("td") if td.text() != "" and not td.text().startswith("m")] == [
        ["verdict-held"], ["verdict-unclear"], ["verdict-failed"]]
    plain = parse_html(write_html(tmp_path / "b.html", "# B\n\n| a |\n|---|\n| beheld |\n", title="B").read_text())
    assert not any(td.classes() for td in plain.iter("td"))  # "beheld" is no verdict
    assert not [n for n in plain.iter() if "legend" in n.classes()]


def test_figures_are_inline_svg_and_the_page_fetches_nothing(toy):
    path, root = toy
    svgs = list(main_of(root).iter("svg"))
    assert [s.attrs.get("aria-label") for s in svgs] == list(FIGURES)  # alt texts, in order
    assert all(s.attrs.get("role") == "img" for s in svgs)
    assert not list(root.iter("img"))
    assert not list(root.iter("script")) and not list(root.iter("link"))
    for node in root.iter():
        for key, value in node.attrs.items():
            if not key.startswith("xmlns"):
                assert not URL.match(value), (node.tag, key, value)
    assert "<?xml" not in path.read_text() and "<!DOCTYPE svg" not in path.read_text()


def test_svg_ids_are_unique_on_the_page_and_every_reference_resolves(toy):
    folder, root = toy[0].parent, toy[1]
    raw = [set(re.findall(r'id="([^"]+)"', (folder / f).with_suffix(".svg").read_text())) for f in FIGURES.values()]
    assert raw[0] & raw[1], "the two SVG files should share ids (matplotlib's), else this test shows nothing"
    ids = [n.attrs["id"] for n in root.iter() if "id" in n.attrs]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    refs = [m for n in root.iter("svg") for e in n.iter() for v in e.attrs.values() for m in REF.findall(v)]
    refs += [v[1:] for n in root.iter("svg") for e in n.iter() for k, v in e.attrs.items()
             if k in ("href", "xlink:href") and v.startswith("#")]
    assert refs and set(refs) <= set(ids)


def test_a_link_to_another_report_points_at_its_html(toy):
    _, root = toy
    assert [a.attrs["href"] for a in main_of(root).iter("a")] == ["other/report.html"]


def test_a_link_to_a_report_without_html_stays(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "report.md").write_text("# X\n")
    root = parse_html(write_html(tmp_path / "r.html", "# R\n\n[x](x/report.md)\n", title="R").read_text())
    assert [a.attrs["href"] for a in main_of(root).iter("a")] == ["x/report.md"]


def test_a_missing_figure_is_a_visible_note(tmp_path):
    _, root = page(tmp_path, "![lost plot](figs/lost.png)\n")
    assert "(figure figs/lost.png not found)" in main_of(root).text()
    assert not list(root.iter("img"))
    assert len(list(main_of(root).iter("svg"))) == len(FIGURES)


def test_a_png_without_svg_twin_is_embedded_as_data(tmp_path):
    plt = pyplot()
    (tmp_path / "raw").mkdir()
    plt.imsave(tmp_path / "raw" / "grid.png", [[0.0, 1.0], [1.0, 0.0]])
    (img,) = list(parse_html(write_html(tmp_path / "r.html", "# R\n\n![grid](raw/grid.png)\n", title="R")
                             .read_text()).iter("img"))
    prefix = "data:image/png;base64,"
    assert img.attrs["src"].startswith(prefix) and img.attrs["alt"] == "grid"
    assert base64.b64decode(img.attrs["src"][len(prefix):]) == (tmp_path / "raw" / "grid.png").read_bytes()


def test_title_contents_and_date(toy):
    _, root = toy
    assert [t.text() for t in root.iter("title")] == [TITLE]
    assert [h.text() for h in root.iter("h1")] == [TITLE]  # the Markdown's own "# title" is not repeated
    (nav,) = list(root.iter("nav"))
    links = [(a.text(), a.attrs["href"]) for a in nav.iter("a")]
    assert [t for t, _ in links] == SECTIONS
    h2_ids = {h.attrs.get("id"): h.text() for h in main_of(root).iter("h2")}
    assert [h2_ids.get(href[1:]) for _, href in links] == SECTIONS  # each entry jumps to its heading
    assert datetime.now(timezone.utc).strftime("%Y-%m-%d") in root.text()


def test_first_heading():
    assert first_heading("intro\n\n# Toy study (toy profile)\n\n## A\n") == "Toy study (toy profile)"
    assert first_heading("no heading\n", default="R") == "R"


def test_title_and_text_are_escaped(tmp_path):
    path = write_html(tmp_path / "r.html", "# x\n\nplain `<b>code</b>`\n", title="<script>alert(1)</script>")
    root = parse_html(path.read_text())
    assert not list(root.iter("script"))
    assert [t.text() for t in root.iter("title")] == ["<script>alert(1)</script>"]
    assert [c.text() for c in root.iter("code")] == ["<b>code</b>"]


def test_write_figure_leaves_a_png_and_its_svg_twin(tmp_path):
    write_report(tmp_path)
    for file in FIGURES.values():
        assert (tmp_path / file).read_bytes().startswith(b"\x89PNG")
        assert b"<svg" in (tmp_path / file).with_suffix(".svg").read_bytes()
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["first.png", "first.svg", "second.png",
                                                                      "second.svg"]


def test_the_write_is_atomic(tmp_path, monkeypatch):
    text = write_report(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())

    class Broken(Exception):
        pass

    def broken_template():
        class T:
            def render(self, **kw):
                raise Broken("renderer died")
        return T()

    with monkeypatch.context() as m:  # the renderer fails: nothing is written
        m.setattr(html_module, "_template", broken_template)
        with pytest.raises(Broken):
            write_html(tmp_path / "report.html", text, title=TITLE)
    assert sorted(p.name for p in tmp_path.iterdir()) == before

    (tmp_path / "report.html").write_text("old page")

    def no_fsync(fd: int) -> None:  # the page's bytes are in the temp file, not yet renamed
        raise Broken("disk died")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", no_fsync)
        with pytest.raises(Broken):
            write_html(tmp_path / "report.html", text, title=TITLE)
    assert (tmp_path / "report.html").read_text() == "old page"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "report.html"])


def test_the_template_ships_with_the_package():
    from importlib.resources import files

    assert files("robustlab.experiments").joinpath("templates/report.html.j2").is_file()


# --- a study's report: run_study writes report.html beside report.md ---------------------------


CFG = StudyConfig(profile="toy", dataset="synthetic", model="resnet-mini", eps=0.03, seeds=(0,), eval_n=40,
                  clean_n=40, eval_batch_size=40)
PGD = {"steps": 5, "step_size": 0.01, "random_start": True, "restarts": 1, "early_stop": True, "eot": 0}
OUTCOMES = {  # (variant, column) -> per-image outcomes on 40 images; the table reads their means
    ("good", "clean"): [1.0] * 36 + [0.0] * 4, ("good", "pgd"): [1.0] * 20 + [0.0] * 20,
    ("bad", "clean"): [0.0] * 36 + [1.0] * 4, ("bad", "pgd"): [0.0] * 40,
}


def test_a_study_writes_its_page_beside_its_report(tmp_path):
    # records put on disk by hand and the report written from them alone (report_only): no model
    # is made, so this takes a second; "good" beats "bad" on clean images by 80 points of 40 images
    rows = ("good", "bad")
    plan = Plan(tuple(Variant(v, Load("unused.safetensors")) for v in rows),
                (Column("clean", "clean", "clean"), Column("pgd", "pgd", "PGD", PGD)),
                tuple((v, ("clean", "pgd")) for v in rows),
                (Table("main", "Clean and PGD accuracy", "", rows, (Cell("clean", "clean"), Cell("pgd", "PGD"))),),
                claims=(Claim("good beats bad", "toy", Side("good", "clean"), Side("bad", "clean")),
                        Claim("bad beats good", "toy", Side("bad", "clean"), Side("good", "clean"))),
                plot=Plot("scatter.png", "main", Cell("clean", "clean"), Cell("pgd", "PGD"), "clean vs PGD"))
    study = Study("html-page-test", "Page test", "none", {"toy": Profile(CFG, "seconds", "records only")},
                  lambda cfg, baseline: plan, lambda cfg, facts: "Two made-up models.")
    store = RecordStore(tmp_path / "records")
    for (variant, column), outcomes in OUTCOMES.items():
        store.put(Record.of_outcomes(variant, 0, column, "clean" if column == "clean" else "attack", outcomes))
    run_study(study, tmp_path, CFG, report_only=True)

    assert (tmp_path / "report.md").is_file() and (tmp_path / "scatter.svg").is_file()
    root = parse_html((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert [t.text() for t in root.iter("title")] == ["Page test (toy profile)"]
    tables = [body_rows(t) for t in root.iter("table")]
    assert [["good", "90.00 (1/1)", "50.00 (1/1)"], ["bad", "10.00 (1/1)", "0.00 (1/1)"]] in tables
    verdicts = {tr.children[0].text(): tr.children[-1] for t in root.iter("table") for tr in t.iter("tr")
                if tr.children and tr.children[0].text() in ("good beats bad", "bad beats good")}
    assert verdicts["good beats bad"].text() == "held" and "verdict-held" in verdicts["good beats bad"].classes()
    assert verdicts["bad beats good"].text() == "did not hold"
    assert "verdict-failed" in verdicts["bad beats good"].classes()
    assert [s.attrs.get("aria-label") for s in main_of(root).iter("svg")] == ["clean vs PGD"]
    assert not list(root.iter("img"))

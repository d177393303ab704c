"""The experiment report's shapes and their renderings: Markdown, offline HTML and JSON."""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

# Where report.md finds the figures copied beside it, per side (names the report chose, so a
# revision's label never becomes a path).
FIGURE_DIRS = ("figures/base", "figures/rev")
STYLE = """body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:left;vertical-align:top}td.num{text-align:right;font-variant-numeric:tabular-nums}
.better{color:#116329;font-weight:600}.worse{color:#b3261e;font-weight:600}
.note{color:#555}.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em}
figure{margin:0}img{max-width:100%;border:1px solid #ddd}code{background:#f4f4f4;padding:0 3px}"""


@dataclass(frozen=True)
class Link:
    """A value shown as a link (an MLflow run, a model version)."""

    text: str
    url: str


@dataclass(frozen=True)
class Row:
    """One compared value: base and new (None: absent), the change and, for scores, a verdict."""

    name: str
    base: Any
    new: Any
    change: float | str | None = None
    """new - base for numbers, "changed"/"same" otherwise; None when there is nothing to say."""
    verdict: str = ""
    """better | worse | same, by the metric's direction; empty when the value is not judged."""


@dataclass(frozen=True)
class Section:
    """A titled table of rows, with an optional note under it."""

    title: str
    rows: list[Row]
    note: str = ""


@dataclass(frozen=True)
class Report:
    """Everything the renderers show: labels, summary lines, tables, figures, what is missing."""

    base: str
    base_commit: str
    new: str
    new_commit: str
    summary: list[str]
    sections: list[Section]
    figures: list[tuple[str, bytes | None, bytes | None]]
    """(file name, PNG at base, PNG at new); None where a side lacks it."""
    missing: list[tuple[str, str]]
    """(side label, why a file could not be read there)."""


def fmt(value: Any) -> str:
    """A value as table text; None (absent) as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def fmt_change(change: float | str | None) -> str:
    """A signed number for a numeric change, else the word."""
    if isinstance(change, int | float) and not isinstance(change, bool):
        return f"{change:+.4g}"
    return "" if change is None else str(change)


def heading(report: Report) -> tuple[str, str]:
    """The title and the line naming both sides by label and commit."""
    return (f"Experiment report: {report.new} vs {report.base}",
            f"{report.new} ({report.new_commit[:12]}) compared with {report.base} "
            f"({report.base_commit[:12]}); written by python -m pipeline.report.")


def md_cell(value: Any) -> str:
    """A Markdown table cell: links kept, pipes escaped, one line."""
    if isinstance(value, Link):
        return f"[{md_cell(value.text)}]({value.url})"
    return fmt(value).replace("|", r"\|").replace("\n", " ")


def render_markdown(report: Report) -> str:
    """The report as Markdown for a pull-request comment; figures are the copied PNG files."""
    title, line = heading(report)
    out = [f"# {title}", "", line, "", *[f"- {s}" for s in report.summary], ""]
    for section in report.sections:
        out += [f"## {section.title}", ""]
        if section.rows:
            out += [f"| | {report.base} | {report.new} | change | |", "|---|---|---|---|---|"]
            out += [f"| {md_cell(r.name)} | {md_cell(r.base)} | {md_cell(r.new)} | "
                    f"{md_cell(fmt_change(r.change))} | {r.verdict} |" for r in section.rows]
        else:
            out.append("_Nothing to show._")
        out += ["", section.note, ""] if section.note else [""]
    out += ["## Figures (reports/figures)", ""]
    if report.figures:
        out += [f"| figure | {report.base} | {report.new} |", "|---|---|---|"]
        for name, *images in report.figures:
            cells = [f"![{name} at {label}]({folder}/{name})" if data is not None else "—"
                     for label, folder, data in zip((report.base, report.new), FIGURE_DIRS,
                                                    images, strict=True)]
            same = " (unchanged)" if images[0] is not None and images[0] == images[1] else ""
            out.append(f"| {name}{same} | {cells[0]} | {cells[1]} |")
    else:
        out.append("_No figures at either revision._")
    out += ["", *missing_lines(report)]
    return "\n".join(out).rstrip() + "\n"


def missing_lines(report: Report) -> list[str]:
    """Markdown bullets of what could not be read, per side."""
    lines = [f"- `{label}`: {note}" for label, note in report.missing]
    return ["## Missing", "", *lines, ""] if lines else []


def code_spans(text: str) -> str:
    """Markdown `code` spans (the notes are written for both formats) as <code> elements."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def html_cell(value: Any, cls: str = "") -> str:
    """A table cell: links as anchors, numbers right-aligned, everything escaped."""
    if isinstance(value, Link):
        text = (f'<a href="{html.escape(value.url)}">{html.escape(value.text)}</a>')
    else:
        text = html.escape(fmt(value))
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    classes = " ".join(c for c in (cls, "num" if numeric else "") if c)
    return f'<td class="{classes}">{text}</td>' if classes else f"<td>{text}</td>"


def html_figure(name: str, data: bytes | None, label: str) -> str:
    """One side's figure, inline as a data: URI (the page needs no other file)."""
    if data is None:
        return f"<figure><p class=note>not at {html.escape(label)}</p></figure>"
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (f'<figure><img src="{src}" alt="{html.escape(name)} at {html.escape(label)}">'
            f"<figcaption>{html.escape(label)}</figcaption></figure>")


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page: inline CSS and images, no scripts."""
    title, line = heading(report)
    esc = html.escape
    out = [f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}'
           f"</title><style>{STYLE}</style></head><body>", f"<h1>{esc(title)}</h1>",
           f"<p>{esc(line)}</p><ul>", *[f"<li>{esc(s)}</li>" for s in report.summary], "</ul>"]
    for section in report.sections:
        out.append(f"<h2>{esc(section.title)}</h2>")
        if section.rows:
            out.append(f"<table><tr><th></th><th>{esc(report.base)}</th><th>{esc(report.new)}"
                       "</th><th>change</th><th></th></tr>")
            out += [f"<tr><td>{esc(r.name)}</td>{html_cell(r.base)}{html_cell(r.new)}"
                    f"{html_cell(fmt_change(r.change))}{html_cell(r.verdict, r.verdict)}</tr>"
                    for r in section.rows]
            out.append("</table>")
        else:
            out.append("<p class=note>Nothing to show.</p>")
        if section.note:
            out.append(f"<p class=note>{code_spans(esc(section.note))}</p>")
    out.append("<h2>Figures (reports/figures)</h2>")
    for name, *images in report.figures:
        same = " (unchanged)" if images[0] is not None and images[0] == images[1] else ""
        out += [f"<h3>{esc(name)}{same}</h3><div class=pair>",
                *[html_figure(name, data, label)
                  for data, label in zip(images, (report.base, report.new), strict=True)],
                "</div>"]
    if not report.figures:
        out.append("<p class=note>No figures at either revision.</p>")
    notes = report.missing
    if notes:
        out += ["<h2>Missing</h2><ul>",
                *[f"<li><code>{esc(label)}</code>: {code_spans(esc(note))}</li>"
                  for label, note in notes],
                "</ul>"]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def table_json(report: Report) -> dict[str, Any]:
    """The comparison as plain JSON (figures by name, not bytes), for scripts and tests."""
    return {"base": {"label": report.base, "commit": report.base_commit},
            "new": {"label": report.new, "commit": report.new_commit},
            "summary": report.summary,
            "sections": [asdict(section) for section in report.sections],
            "figures": [{"name": name, "base": a is not None, "new": b is not None,
                         "identical": a is not None and a == b}
                        for name, a, b in report.figures],
            "missing": report.missing}

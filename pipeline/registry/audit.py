"""The audit trail in words: a gate decision as Markdown sentences (the version's description)
and the trail of decisions as a Markdown table (the registered model's description, and the
registering run's audit.md).

The machine-readable form stays in the `audit.*` tags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# MLflow's registry keeps up to 5000 characters of a description (its database column).
MAX_DESCRIPTION = 5000
MAX_REASON = 160  # characters of a reason a table row shows; the version's description has all
COLUMNS = ("Version", "Decided (UTC)", "Decision", "Champion after", "Metric", "This version",
           "Champion (score)", "Rows compared", "Reason")


@dataclass(frozen=True)
class Notes:
    """What a decision's readable form states besides the decision itself."""

    model: str
    """Registered model name."""
    contract: str
    """The input contract, short human form (pipeline/registry/contract.py Contract.describe)."""
    data_source: str
    run_id: str
    """The run that registered the version."""
    rule: str
    """The register params it was gated under, e.g. `metric = log_loss, …`."""


def cell(text: Any) -> str:
    """A value made safe for one Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def score_text(value: float | None) -> str:
    """A score as the tags write it, or a dash."""
    return "–" if value is None else f"{value:.6f}"


def unseen_by(champion_known: bool) -> str:
    """Who did not learn from the compared rows (the gate's reason and the audit say the same)."""
    # Without the champion's record only the challenger's training rows can be left out.
    return "neither model learned from" if champion_known else "the challenger did not learn from"


def scores_sentence(entry: dict[str, Any]) -> str:
    """What was scored, on which rows, with which result."""
    metric, mine, theirs = entry["metric"], entry["challenger_score"], entry["champion_score"]
    rows, left = entry.get("compared_rows"), entry.get("excluded_rows")
    known = entry.get("overlap") != "unknown"
    left_out = (f"{left} left out: a model had learned from them" if known else
                f"{left} left out: the challenger had learned from them; the champion's "
                "training rows are unknown")
    where = "today's test split" if rows is None else f"{rows} of today's test rows ({left_out})"
    if mine is not None and theirs is not None:
        return (f"Both models were scored on {where}: test {metric} {mine:.6f} for this version, "
                f"{theirs:.6f} for champion v{entry['champion_version']}.")
    if mine is not None:
        return f"This version was scored on {where}: test {metric} {mine:.6f}."
    if rows is None:  # a decision recorded before the gate counted rows
        return f"Too few test rows to compare the two by {metric} (the champion is kept)."
    return (f"Only {rows} of today's test rows were ones {unseen_by(known)} ({left_out}): too "
            f"few to compare the two by {metric} (the champion is kept).")


def version_description(entry: dict[str, Any], notes: Notes) -> str:
    """A gated version's decision in sentences (its registry description, Markdown)."""
    before = entry["champion_before"]
    # Plain words first: the registry's versions table shows this text raw, cut at ~30 chars.
    if entry["promote"]:
        head = (f"Promoted to champion of {notes.model}"
                + (f", replacing v{before}." if before else ": its first version."))
    else:
        head = (f"Not promoted: v{before} stays the champion of {notes.model}; this "
                "version is the challenger.")
    facts = [("Input contract", notes.contract), ("Data source", notes.data_source),
             ("Registered by run", f"`{notes.run_id}`"), ("Gate", notes.rule),
             ("Decided at (UTC)", entry["at"])]
    table = ["| | |", "|---|---|", *(f"| {key} | {cell(value)} |" for key, value in facts)]
    text = "\n".join([head, "", scores_sentence(entry), "",
                      f"The gate's reason: {entry['reason']}.", "", *table])
    return clip(text)


def trail_rows(entries: list[dict[str, Any]]) -> list[str]:
    """One Markdown table row per decision, newest first."""
    rows = []
    for e in reversed(entries):
        reason = e["reason"] if len(e["reason"]) <= MAX_REASON else e["reason"][:MAX_REASON] + "…"
        champion = "–" if e["champion_version"] is None else (
            f"v{e['champion_version']} ({score_text(e['champion_score'])})")
        values = (f"v{e['version']}", e["at"], "promoted" if e["promote"] else "rejected",
                  "–" if e["champion_after"] is None else f"v{e['champion_after']}", e["metric"],
                  score_text(e["challenger_score"]), champion,
                  "–" if e.get("compared_rows") is None else e["compared_rows"], reason)
        rows.append("| " + " | ".join(cell(v) for v in values) + " |")
    return rows


def trail_table(entries: list[dict[str, Any]], budget: int | None = None) -> str:
    """The decisions as a Markdown table, newest first; within `budget` characters if given."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in trail_rows(entries):
        if budget is not None and sum(len(x) + 1 for x in [*lines, row]) > budget:
            break  # the newest decisions fit; the audit.* tags keep every one
        lines.append(row)
    return "\n".join(lines)


def model_description(name: str, contract: str, champion: str | None,
                      entries: list[dict[str, Any]]) -> str:
    """The registered model's description: its task, who serves, the latest decisions."""
    serving = "no champion yet" if champion is None else f"`@champion` is v{champion}"
    head = (f"Binary classifier on raw inputs: **{contract}**. {serving}; `@challenger` is the "
            "newest gated version. Every version of this model takes this input contract: the "
            "register stage refuses a model of another prediction task under this name.\n\n"
            f"Gate decisions on `{name}`, newest first (each version's description says why; "
            "the `audit.*` tags hold them as JSON, and each registering run's `audit.md` the "
            "whole trail):\n\n")
    # Clipped whole: a long contract (wide column names) can outgrow the limit by itself.
    return clip(head + trail_table(entries, MAX_DESCRIPTION - len(head)))


def audit_markdown(entry: dict[str, Any], notes: Notes, entries: list[dict[str, Any]]) -> str:
    """audit.md for the registering run: this decision in words, then the whole trail."""
    return (f"# Gate decision on `{notes.model}` v{entry['version']}\n\n"
            f"{version_description(entry, notes)}\n\n## Every gate decision on "
            f"`{notes.model}`, newest first\n\n{trail_table(entries)}\n")


def clip(text: str) -> str:
    """Text cut to what a registry description holds."""
    return text if len(text) <= MAX_DESCRIPTION else text[:MAX_DESCRIPTION - 1] + "…"

"""The audit trail in words: deterministic Markdown from the decisions the tags record."""

from __future__ import annotations

from pipeline.registry.audit import MAX_DESCRIPTION, Notes, model_description, version_description
from pipeline.registry.gate import comparison

NOTES = Notes("digits-odd", "images → 'odd' vs 'even'", "digits", "abc123",
              "register.metric = log_loss, min_improvement = 0, min_gate_rows = 30")


def entry(version: str, promote: bool, before: str | None, **scores: object) -> dict:
    """An audit.* tag's entry, as registry.record writes it."""
    return {"at": "2026-01-02T03:04:05Z", "version": version, "run_id": "abc123",
            "champion_before": before, "champion_after": version if promote else before,
            "promote": promote, "reason": "test log_loss 0.1 vs champion v1 0.2 | improvement",
            "metric": "log_loss", "challenger_score": 0.1, "champion_score": 0.2,
            "champion_version": before, "compared_rows": 180, "excluded_rows": 20,
            "overlap": "known", **scores}


def test_a_version_description_states_the_decision_in_sentences() -> None:
    text = version_description(entry("2", True, "1"), NOTES)
    assert text == version_description(entry("2", True, "1"), NOTES)  # deterministic
    assert text.startswith("Promoted to champion of digits-odd, replacing v1.\n\n"
                           "Both models were scored on 180 of today's test rows (20 left out: "
                           "a model had learned from them): test log_loss 0.100000 for this "
                           "version, 0.200000 for champion v1.")
    assert "| Input contract | images → 'odd' vs 'even' |" in text
    assert "| Registered by run | `abc123` |" in text
    kept = version_description(entry("3", False, "2"), NOTES)
    assert kept.startswith("Not promoted: v2 stays the champion of digits-odd")


def test_the_model_description_keeps_the_newest_decisions_within_the_limit() -> None:
    trail = [entry(str(v), True, str(v - 1) if v > 1 else None) for v in range(1, 200)]
    text = model_description("digits-odd", NOTES.contract, "199", trail)
    assert len(text) <= MAX_DESCRIPTION and "`@champion` is v199" in text
    rows = [line for line in text.splitlines() if line.startswith("| v")]
    assert rows[0].startswith("| v199 |") and 5 < len(rows) < 199
    # A "|" inside a reason cannot break the table.
    assert "0.2 \\| improvement" in rows[0]


def test_a_contract_with_long_column_names_still_fits_the_model_description() -> None:
    contract = "table of 3 columns (" + ", ".join("c" * 2500 for _ in range(3)) + ") → 'b' vs 'a'"
    text = model_description("wide-b", contract, "1", [entry("1", True, None)])
    assert len(text) <= MAX_DESCRIPTION and text.endswith("…")


def test_too_few_rows_with_an_unknown_overlap_says_what_the_gate_says() -> None:
    """Without the champion's record only the challenger's rows are left out: the rows kept
    are not known to be new to both models, and the sentence says the gate's words."""
    unknown = entry("3", False, "2", challenger_score=None, champion_score=None,
                    compared_rows=4, excluded_rows=6, overlap="unknown")
    text = version_description(unknown, NOTES)
    gate_words = comparison(list("abcdefghij"), set("abcdef"), None).describe()
    assert "compared on 4 test rows the challenger did not learn from" in gate_words
    assert ("Only 4 of today's test rows were ones the challenger did not learn from (6 left "
            "out: the challenger had learned from them; the champion's training rows are "
            "unknown): too few to compare the two by log_loss") in text
    assert "new to both" not in text and "neither model" not in text
    known = version_description({**unknown, "overlap": "known"}, NOTES)
    assert "Only 4 of today's test rows were ones neither model learned from (6 left out" in known

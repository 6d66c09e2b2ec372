"""The summary table of an evaluation (rich), one row per mode and policy."""

from __future__ import annotations

from typing import Any

COLUMNS = [
    ("mode", "mode", "{}"),
    ("policy", "policy", "{}"),
    ("BLEU", "BLEU", "{:.2f}"),
    ("chrF", "chrF", "{:.2f}"),
    ("LAAL", "LAAL", "{:.2f}"),
    ("AL", "AL", "{:.2f}"),
    ("AP", "AP", "{:.2f}"),
    ("DAL", "DAL", "{:.2f}"),
    ("ATD", "ATD", "{:.2f}"),
    ("CA-LAAL", "CA_LAAL", "{:.2f}"),
    ("tok/sent", "tokens_computed", "{:.1f}"),
    ("computed/min", "computed_over_minimum", "{:.2f}"),
    ("s/sent", "seconds_per_sentence", "{:.2f}"),
    ("run s", "wall_seconds", "{:.1f}"),
]


# exposst-eval --talks: the same runs scored as whole talks (evaluation/talks.py)
TALK_COLUMNS = [
    ("mode", "mode", "{}"),
    ("policy", "policy", "{}"),
    ("sentence BLEU", "BLEU", "{:.2f}"),
    ("talk BLEU", "talk_BLEU", "{:.2f}"),
    ("talk chrF", "talk_chrF", "{:.2f}"),
    ("LongYAAL ms", "LongYAAL", "{:.0f}"),
    ("CA-LongYAAL ms", "CA_LongYAAL", "{:.0f}"),
    ("StreamLAAL s", "StreamLAAL", "{:.2f}"),
    ("CA-StreamLAAL s", "CA_StreamLAAL", "{:.2f}"),
    ("sentences cut", "segmented_sentences", "{}"),
    ("references", "reference_sentences", "{}"),
]


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    return fmt.format(value)


def summary_table(
    rows: list[dict[str, Any]], title: str = "evaluation", columns: list = COLUMNS
) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for name, key, _ in columns:
        table.add_column(name, justify="left" if key in ("mode", "policy") else "right")
    for row in rows:
        table.add_row(*[_cell(row, key, fmt) for _, key, fmt in columns])
    return table


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The same table in Markdown, for docs/benchmarks.md."""
    lines = ["| " + " | ".join(name for name, _, _ in COLUMNS) + " |"]
    lines.append("|" + "---|" * len(COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, key, fmt) for _, key, fmt in COLUMNS) + " |")
    return "\n".join(lines)

"""PNG plots of an evaluation: quality against latency, and cost per sentence."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

OFFLINE = "offline"


def _axis_value(policy: str) -> float | None:
    """The number in a policy spec (k of wait-k) to order policies on an axis."""
    match = re.search(r"(\d+(?:\.\d+)?)", policy)
    return float(match.group(1)) if match else None


def pyplot():  # matplotlib without a display (PNG files only)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _modes(rows: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for row in rows:
        if row["mode"] != OFFLINE and row["mode"] not in seen:
            seen.append(row["mode"])
    return seen


def plot_quality_latency(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """BLEU against LAAL: one curve per mode across policies; offline as a dashed line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for mode in _modes(rows):
        points = sorted(
            ((r["LAAL"], r["BLEU"], r["policy"]) for r in rows if r["mode"] == mode),
            key=lambda p: p[0],
        )
        line = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=mode)
        for x, y, policy in points:
            ax.annotate(
                policy,
                (x, y),
                textcoords="offset points",
                xytext=(3, 3),
                fontsize=7,
                color=line[0].get_color(),
            )
    for row in rows:
        if row["mode"] == OFFLINE:
            ax.axhline(
                row["BLEU"], linestyle="--", color="grey", label=f"offline ({row['BLEU']:.1f})"
            )
    ax.set(xlabel="LAAL (source words)", ylabel="BLEU", title=title or "quality against latency")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_cost(
    rows: list[dict[str, Any]], path: Path, title: str = "", minimum_of: str = "exposst"
) -> Path:
    """Tokens computed and wall-clock seconds per sentence, per mode across policies.

    ``minimum_of`` names the mode whose rows give the dotted minimum-tokens line.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    keys = [
        ("tokens_computed", "tokens computed / sentence"),
        ("seconds_per_sentence", "wall-clock s / sentence"),
    ]
    policies = [r["policy"] for r in rows if r["mode"] != OFFLINE]
    order = sorted(dict.fromkeys(policies), key=lambda p: (_axis_value(p) or 0.0, p))
    for ax, (key, label) in zip(axes, keys, strict=True):
        for mode in _modes(rows):
            by_policy = {r["policy"]: r[key] for r in rows if r["mode"] == mode}
            xs = [i for i, p in enumerate(order) if p in by_policy]
            ax.plot(xs, [by_policy[order[i]] for i in xs], marker="o", label=mode)
        for row in rows:
            if row["mode"] == OFFLINE:
                ax.axhline(row[key], linestyle="--", color="grey", label="offline")
        if key == "tokens_computed":
            minimum = {r["policy"]: r["tokens_minimum"] for r in rows if r["mode"] == minimum_of}
            xs = [i for i, p in enumerate(order) if p in minimum]
            if xs:
                ys = [minimum[order[i]] for i in xs]
                ax.plot(xs, ys, linestyle=":", color="black", label=f"minimum ({minimum_of})")
        ax.set_xticks(range(len(order)), order, rotation=30)
        ax.set(ylabel=label, xlabel="policy")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title or "cost per sentence")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

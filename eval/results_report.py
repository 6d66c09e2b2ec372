"""Tables and plots of docs/results.md from the records ``eval/results_eval.sh`` wrote.

Each test slice was evaluated in three ``exposst-eval`` runs, one per adapter; this
merges them into one BLEU-LAAL plot and one cost plot per slice, with each curve
named by its (fine-tuning, inference) pair, and prints the Markdown tables.  The
``slot_len`` runs become a table and a plot of dev BLEU and the training layout's
mean position span against ``slot_len`` (the paper's Figure 3).

    .venv/bin/python eval/results_report.py out/results runs/results docs/results
    .venv/bin/python eval/results_report.py --cpu out/results runs/results docs/results
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vllm_exposst.evaluation.plots import plot_cost, plot_quality_latency, pyplot
from vllm_exposst.evaluation.record import write_record
from vllm_exposst.evaluation.report import markdown_table

# (run folder, method in that run) -> curve name: fine-tuning + inference
CURVES = {
    ("exposst-la", "exposst"): "ExPosST FT + exposst",
    ("shift-la", "shift"): "shift FT + shift",
    ("offline", "recompute"): "offline SFT + recompute",
    ("offline", "shift"): "offline SFT + shift",
    ("offline", "offline"): "offline",
}
LOOKAHEAD_CURVES = {
    ("exposst-la", "exposst"): "ExPosST FT + exposst",
    ("exposst", "exposst"): "ExPosST FT, no lookahead labels + exposst",
    ("shift-la", "shift"): "shift FT + shift",
    ("shift", "shift"): "shift FT, no lookahead labels + shift",
    ("offline", "offline"): "offline",
}
# the refeed-rule ablation (eval/results_eval.sh refeed): run folder -> curve name
REFEED_CURVES = {
    ("v1-source", "exposst"): "ExPosST FT v1 + exposst, first rule",
    ("v1-refeed", "exposst"): "ExPosST FT v1 + exposst, refeed rule",
    ("v2-refeed", "exposst"): "ExPosST FT v2 (+CPU refeed FT) + exposst, refeed",
}
# the adapters trained on the CPU (eval/results_eval.sh cpu): run folder -> curve name
CPU_CURVES = {
    ("exposst-cpu", "exposst"): "ExPosST FT (CPU, two stages) + exposst",
    ("offline-cpu-2", "recompute"): "offline SFT (CPU) + recompute",
    ("offline-cpu-2", "offline"): "offline",  # the dashed line of the plots
}
# baselines kept from the first results (docs/results/<slice>.json; adapters not shipped)
BASELINES = ("offline SFT + recompute", "shift FT + shift", "offline")
SHIFT = ("shift FT + shift",)
SLOT_RUNS = {"exposst-la-slot2": 2, "exposst-la-slot4": 4, "exposst-la": 8, "exposst-la-slot16": 16}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def merged_rows(
    folder: Path, curves: dict[tuple[str, str], str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of every run under ``folder``, renamed by curve; and the source records."""
    rows, sources = [], []
    for (run, method), name in curves.items():
        record_path = folder / run / "record.json"
        if not record_path.exists():
            print(f"missing {record_path}", file=sys.stderr)
            continue
        record = load(record_path)
        sources.append({k: record[k] for k in ("command", "date", "git_commit", "adapter")})
        for row in record["results"]:
            if row.get("mode", row.get("method")) == method:  # records before the rename
                rows.append({**row, "mode": name, "inference": method})
    return rows, sources


def curves(
    folder: Path,
    out: Path,
    name: str,
    title: str,
    chosen: dict[tuple[str, str], str] = CURVES,
    tag: str = "",
) -> None:
    rows, sources = merged_rows(folder / name, chosen)
    if not rows:
        return
    stem = f"{name}{tag}"
    plot_quality_latency(rows, out / f"{stem}_quality_latency.png", title=title)
    if not tag:
        plot_cost(rows, out / f"{stem}_cost.png", title=title, minimum_of="ExPosST FT + exposst")
    write_record(out / f"{stem}.json", rows, runs=sources)
    print(f"\n### {title}\n")
    print(markdown_table(rows))


def curves_with_baselines(
    folder: Path,
    out: Path,
    name: str,
    title: str,
    chosen: dict[tuple[str, str], str],
    baselines: tuple[str, ...],
    tag: str,
    minimum_of: str,
    **extra: Any,
) -> None:
    """One slice's runs under ``folder``, beside the first results' ``baselines`` (from
    ``out/NAME.json``; their adapters were not kept), plotted as ``NAME_TAG_*.png``."""
    rows, sources = merged_rows(folder, chosen)
    if not rows:
        return
    earlier = out / f"{name}.json"
    if earlier.exists():
        for row in load(earlier)["results"]:
            curve = row.get("mode", row.get("method"))
            if curve in baselines:
                rows.append({**row, "mode": f"{curve} (first results)"})
        sources.append({"baselines": str(earlier)})
    plot_quality_latency(rows, out / f"{name}_{tag}_quality_latency.png", title=title)
    plot_cost(rows, out / f"{name}_{tag}_cost.png", title=title, minimum_of=minimum_of)
    write_record(out / f"{name}_{tag}.json", rows, runs=sources, **extra)
    print(f"\n### {title}\n")
    print(markdown_table(rows))


def refeed_curves(folder: Path, out: Path, name: str, title: str) -> None:
    """The refeed ablation on one slice, beside the first results' baselines."""
    minimum_of = REFEED_CURVES[("v1-refeed", "exposst")]
    curves_with_baselines(
        folder / "refeed" / name, out, name, title, REFEED_CURVES, BASELINES, "refeed", minimum_of
    )


def cpu_curves(folder: Path, out: Path, name: str, title: str) -> None:
    """The adapters trained on the CPU (step cpu), beside the first results' shift
    baseline (the issue's comparison; no new shift adapter was trained), then ExPosST
    against recompute on the sentences both ran."""
    minimum_of = CPU_CURVES[("exposst-cpu", "exposst")]
    rows = same_sentences(folder / "cpu" / name)
    curves_with_baselines(
        folder / "cpu" / name, out, name, title, CPU_CURVES, SHIFT, "cpu", minimum_of, same=rows
    )
    if rows:
        print(f"\n### {title}: ExPosST against recompute on the same sentences\n")
        print("| policy | sentences | ExPosST FT + exposst | offline SFT + recompute | ratio |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['policy']} | {r['sentences']} | {r['exposst_BLEU']:.2f} "
                f"| {r['recompute_BLEU']:.2f} | {r['ratio']:.2f} |"
            )


def same_sentences(slice_folder: Path) -> list[dict[str, Any]]:
    """ExPosST's BLEU on the sentences the recompute run covered (it runs fewer: it
    costs several times more), from each policy's ``instances.log``, beside recompute's."""
    import sacrebleu

    baseline_path = slice_folder / "offline-cpu-2" / "record.json"
    exposst_folder = slice_folder / "exposst-cpu" / "exposst"
    if not baseline_path.exists() or not exposst_folder.exists():
        return []
    baseline = load(baseline_path)
    first, count = baseline["start"], baseline["sentences"]
    exposst_start = load(slice_folder / "exposst-cpu" / "record.json")["start"]
    rows = []
    for result in baseline["results"]:
        log = exposst_folder / result["policy"] / "instances.log"
        if result["mode"] != "recompute" or not log.exists():
            continue
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        # instances are indexed from the run's own first line
        wanted = {first - exposst_start + i for i in range(count)}
        chosen = sorted((x for x in lines if x["index"] in wanted), key=lambda x: x["index"])
        if len(chosen) != count:
            print(f"{log}: {len(chosen)} of the {count} sentences", file=sys.stderr)
            continue
        hypotheses = [x["prediction"] for x in chosen]
        bleu = sacrebleu.corpus_bleu(hypotheses, [[x["reference"] for x in chosen]]).score
        rows.append(
            {
                "policy": result["policy"],
                "sentences": f"[{first}:{first + count}]",
                "exposst_BLEU": bleu,
                "recompute_BLEU": result["BLEU"],
                "ratio": bleu / result["BLEU"] if result["BLEU"] else float("nan"),
            }
        )
    return rows


SLOT_DEV_SETS = {"slot-m30k": "Multi30K val [0:100]", "slot": "IWSLT 2017 dev [0:100]"}


def slot_points(folder: Path, adapters: Path) -> list[dict[str, Any]]:
    """One row per (dev set, slot_len): dev scores, and the training layout's lengths."""
    points = []
    for step, dev in SLOT_DEV_SETS.items():
        for run, slot_len in SLOT_RUNS.items():
            record_path = folder / step / run / "record.json"
            if not record_path.exists():
                continue
            row = load(record_path)["results"][0]
            meta = load(adapters / run / "exposst.json")
            train = meta["data"]["train"]
            points.append(
                {
                    "dev": dev,
                    "slot_len": slot_len,
                    "BLEU": row["BLEU"],
                    "chrF": row["chrF"],
                    "LAAL": row["LAAL"],
                    "mean_tokens": train["mean_tokens"],
                    "mean_positions": train["mean_positions"],
                    "final_loss": meta["training"]["last_loss"],
                }
            )
    return points


def slot_sensitivity(folder: Path, adapters: Path, out: Path) -> None:
    points = slot_points(folder, adapters)
    if not points:
        return
    print("\n### slot_len sensitivity (wait-3)\n")
    columns = ["dev set", "slot_len", "BLEU", "chrF", "LAAL", "final training loss"]
    columns += ["tokens / example", "position span / example"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for p in points:
        print(
            f"| {p['dev']} | {p['slot_len']} | {p['BLEU']:.2f} | {p['chrF']:.2f} | {p['LAAL']:.2f} "
            f"| {p['final_loss']:.3f} | {p['mean_tokens']:.1f} | {p['mean_positions']:.1f} |"
        )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for dev in SLOT_DEV_SETS.values():
        mine = [p for p in points if p["dev"] == dev]
        if mine:
            ax.plot([p["slot_len"] for p in mine], [p["BLEU"] for p in mine], marker="o", label=dev)
    xs = sorted({p["slot_len"] for p in points})
    ax.set(xlabel="slot_len", ylabel="dev BLEU (wait-3)", xscale="log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xticks([], minor=True)  # no 3x10^0-style labels between the slot lengths
    twin = ax.twinx()
    spans = {p["slot_len"]: p["mean_positions"] for p in points}
    twin.plot(xs, [spans[x] for x in xs], marker="s", linestyle="--", color="grey")
    twin.set_ylabel("position span per training example (dashed)")
    ax.set_title("slot_len sensitivity: ExPosST FT (lookahead labels)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "slot_len.png", dpi=120)
    plt.close(fig)
    write_record(out / "slot_len.json", points)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("evals", type=Path, help="OUT of eval/results_eval.sh")
    parser.add_argument("adapters", type=Path, help="folder of eval/train_results.py")
    parser.add_argument("out", type=Path, help="folder for the merged PNGs and records")
    parser.add_argument(
        "--refeed", action="store_true", help="only the refeed ablation (step refeed)"
    )
    parser.add_argument("--cpu", action="store_true", help="only the CPU adapters (step cpu)")
    args = parser.parse_args(argv)
    if args.cpu:
        cpu_curves(args.evals, args.out, "m30k", "Multi30K test2016, adapters trained on the CPU")
        cpu_curves(args.evals, args.out, "iwslt", "IWSLT 2017 test [0:50], CPU adapters")
        return 0
    if args.refeed:
        for name, data in (
            ("m30k", "Multi30K test2016 [0:100]"),
            ("iwslt", "IWSLT 2017 test [0:50]"),
        ):
            refeed_curves(args.evals, args.out, name, f"{data}: the refeed rule")
        return 0
    curves(args.evals, args.out, "m30k", "Multi30K test2016 [0:100], SmolLM2-135M + LoRA")
    curves(args.evals, args.out, "iwslt", "IWSLT 2017 test [0:50], SmolLM2-135M + LoRA")
    curves(
        args.evals,
        args.out,
        "m30k",
        "Multi30K test2016 [0:100]: without lookahead labels",
        LOOKAHEAD_CURVES,
        tag="_lookahead",
    )
    slot_sensitivity(args.evals, args.adapters, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

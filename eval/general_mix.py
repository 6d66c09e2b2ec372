"""Write the general training mix as ``source<TAB>target`` lines (docs/training.md).

wmt-news-ende/train, iwslt2017-ende/test twice (the TED domain of the report set),
a seeded sample of 10,000 Multi30K train pairs and 10,000 Tatoeba pairs, shuffled
with seed 0: 66,402 pairs from ``../shared/data``.

    .venv/bin/python eval/general_mix.py ../shared/data runs/general/train.tsv
"""

from __future__ import annotations

import random
import sys
from pathlib import Path


def pairs(data: Path, stem: str) -> list[tuple[str, str]]:
    en = (data / f"{stem}.en").read_text(encoding="utf-8").splitlines()
    de = (data / f"{stem}.de").read_text(encoding="utf-8").splitlines()
    if len(en) != len(de):
        raise SystemExit(f"general_mix: {stem}.en and .de differ in length")
    return [
        (a.replace("\t", " ").strip(), b.replace("\t", " ").strip())
        for a, b in zip(en, de)
        if a.strip() and b.strip()
    ]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    data, out = Path(argv[0]), Path(argv[1])
    rng = random.Random(0)
    ted = pairs(data, "iwslt2017-ende/test")
    mix = pairs(data, "wmt-news-ende/train") + ted + ted
    mix += rng.sample(pairs(data, "multi30k/train"), 10_000)
    mix += rng.sample(pairs(data, "tatoeba-deu-eng/tatoeba"), 10_000)
    rng.shuffle(mix)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{a}\t{b}\n" for a, b in mix), encoding="utf-8")
    print(f"{len(mix)} pairs -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

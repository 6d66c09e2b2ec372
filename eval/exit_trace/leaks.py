"""Read an exit trace (see sitecustomize.py here): what leaked, and what each process did.

.venv/bin/python eval/exit_trace/leaks.py /tmp/trace.txt
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict


def main(path: str) -> int:
    registered: dict[tuple[str, str], str] = {}
    unregistered: Counter[tuple[str, str]] = Counter()
    events: defaultdict[str, list[str]] = defaultdict(list)
    with open(path) as handle:
        lines = handle.read().splitlines()
    for line in lines:
        pid, kind, *rest = line.split()
        if kind in ("register", "unregister"):
            key = (rest[0], rest[1])
            if kind == "register":
                registered[key] = f"pid {pid}: {line.split(' | ')[1]}"
            else:
                unregistered[key] += 1
        else:
            events[pid].append(" ".join([kind, *rest[:-1]]))
    leaked = [key for key in registered if not unregistered[key]]
    for rtype, name in leaked:
        print(f"leaked {rtype} {name}, created by {registered[(rtype, name)]}")
    for pid, seen in events.items():
        print(f"pid {pid}: {'; '.join(seen)}")
    print(f"{len(leaked)} leaked of {len(registered)} registered")
    return 1 if leaked else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

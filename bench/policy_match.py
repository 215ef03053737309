"""What checking one command against a policy costs, worst cases at 32 KiB (issue 9, finding 11).

Policy.check runs on the server's event loop, so its cost is a pause for every connection.
Run: .venv/bin/python bench/policy_match.py   (best of 5, milliseconds)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from rexec.server.identity import Policy
from rexec.server.patterns import Pattern
from rexec.wire.frames import Run

SIZE = 32 * 1024 - 8
random.seed(1)
AB = "".join(random.choice("ab") for _ in range(SIZE))  # noqa: S311 - data, not secrets

CASES = [  # (pattern, command, what it shows)
    ("cat ([a-z0-9/._-]+ ?)+", "cat " + "a" * (SIZE - 5) + "!", "the finding's ReDoS, refused"),
    ("cat ([a-z0-9/._-]+ ?)+", "cat " + ("ab/ " * SIZE)[:SIZE - 4], "the same, admitted"),
    ("ls( [\\w./-]+)*", "ls" + " a" * (SIZE // 2 - 1), "a typical argument pattern"),
    ("|".join(f"cmd{i} [a-z ]*" for i in range(500)), "cmd499 " + "a" * (SIZE - 7),
     "500 alternatives"),
    ("(?:a|b)*a(?:a|b){20}", AB, "DFA state blow-up (2^20 states)"),
    ("(?:(?:a|b)*a(?:a|b){20}){1,45}", AB, "built to defeat the DFA: NFA fallback"),
]


def best(action: Callable[[], object], rounds: int = 5) -> float:
    """The fastest of ``rounds`` runs, in milliseconds."""
    fastest = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        fastest = min(fastest, time.perf_counter() - started)
    return fastest * 1000


def main() -> None:
    print(f"{'pattern':44} {'shell':>8} {'argv':>8}  case")
    for text, command, what in CASES:
        cells = []
        for shell in (True, False):
            policy = Policy(allow=(Pattern(text, never_nl=True),), shell=shell)
            run = Run(command=command)
            cells.append(best(lambda p=policy, r=run: p.check(r)))
        shown = text if len(text) <= 44 else text[:41] + "..."
        print(f"{shown:44} {cells[0]:8.2f} {cells[1]:8.2f}  {what}")
    print("argv mode adds shlex.split + shlex.join of the line (pure Python) to the match")


if __name__ == "__main__":
    main()

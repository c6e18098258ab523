"""
Read a valgrind memcheck log of the test suite and sort its reports into those whose stack
passes through txsession (or PyO3 as built into txsession's module) and the rest, which come
from CPython, glibc and other extensions, PyO3-based ones such as cryptography included.

    python tests/memcheck.py memcheck.log

Prints a count of each kind of report on each side and every report of ours, and exits 1 if
there is one, except the one table PyO3 allocates once per class when it creates the class
and never frees, since the class lives as long as the process.
"""

import collections
import re
import sys

KINDS = re.compile(
    r"(Invalid (read|write|free)|Conditional jump|Use of uninitialised|Syscall param"
    r"|Mismatched free|Source and destination overlap|[\d,]+ bytes in [\d,]+ blocks are)"
)
OURS = ("_txsession", "/txsession/")
# A frame in another shared object is named with its path, "(in /.../_rust.abi3.so)", when
# that object has no debug information; txsession's module, built with it, names source files.
ELSEWHERE = re.compile(r"\(in /")


def inTxsession(line):
    """
    Whether a stack frame is in txsession's module: its own code, or PyO3's compiled into it.
    """
    if any(marker in line for marker in OURS):
        return True
    return "pyo3" in line and not ELSEWHERE.search(line)


# PyO3's type objects live for the whole process: the member table each one is built with is
# allocated once, at import, and never freed.
KNOWN = ("definitely lost", "create_type_object")


def reports(text):
    for block in re.split(r"\n==\d+== ?\n", text):
        lines = [re.sub(r"^==\d+== ?", "", line) for line in block.splitlines()]
        lines = [line for line in lines if line]
        if lines and KINDS.match(lines[0]):
            yield lines


def main(path):
    with open(path) as f:
        text = f.read()
    counts = collections.Counter()
    ours = []
    for lines in reports(text):
        kind = re.sub(r"[\d,]+", "N", lines[0]).split(" in loss record")[0]
        mine = any(inTxsession(line) for line in lines)
        known = mine and all(any(k in line for line in lines) for k in KNOWN)
        side = "txsession (known: PyO3 type table)" if known else "txsession" if mine else "other"
        counts[side, kind] += 1
        if mine and not known:
            ours.append(lines)
    for (side, kind), n in sorted(counts.items()):
        print(f"{n:6d}  {side:36s}  {kind}")
    for lines in ours:
        print("\n".join(lines[:25]), end="\n\n")
    print(f"{len(ours)} reports through txsession's code")
    return 1 if ours else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

"""
What the benchmark and the soak both need to report: this process's resident memory and
Markdown tables.
"""

from __future__ import annotations

import os


def rss() -> int:
    """
    This process's resident memory, in bytes.
    """
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def table(header: tuple[str, ...], lines: list[list[str]]) -> str:
    """
    A Markdown table with columns padded to their widest cell.
    """
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]
    out = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    return "\n".join(out)

"""Summarise py-spy's collapsed stacks (``py-spy record -f raw``): where a process's samples go.

Each line of the input is ``frame;frame;...;frame COUNT`` (outermost first), one line per
distinct stack. ``own`` is the share of samples whose innermost frame is the function,
``incl`` the share of samples with the function anywhere on the stack (counted once per
sample). Frames are shown as ``function (file:line)``; ``--strip-lines`` drops the line so a
function's samples add up whatever line they were on.

    py-spy record --pid PID --subprocesses -r 250 -f raw -o gw.txt -d 30
    python benchmarks/collapsed.py gw.txt --top 40
    python benchmarks/collapsed.py gw.txt --match comptroller --top 40   # only our frames
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

__all__ = ["GATEWAY_PARTS", "parts", "read_stacks", "summarise"]

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str, strip_lines: bool) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"].split("site-packages/")[-1].split("/src/")[-1].split("lib/python3.11/")[-1]
    where = path if strip_lines or not match["line"] else f"{path}:{match['line']}"
    return f"{match['name']} ({where})"


def read_stacks(path: Path, *, strip_lines: bool = True) -> Counter[tuple[str, ...]]:
    """The samples of each distinct stack (outermost frame first)."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _LINE.match(line.strip())
        if match is None:
            continue
        frames = tuple(_short(f, strip_lines) for f in match[1].split(";") if f)
        stacks[frames] += int(match[2])
    return stacks


GATEWAY_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ledger: Engine.admit (defenses, SQLite reserve)", ("Engine.admit (",)),
    ("ledger: Engine.settle (defenses, SQLite settle)", ("Engine.settle (",)),
    ("ledger: other work in the ledger thread", ("BoundedCall.execute (",)),
    ("thread hop to and from the ledger thread (anyio, queue, wake-ups)", ("WorkerThread.run (", "Gateway.run (")),
    ("upstream client (aiohttp, body to JSON)", ("Upstream.open (", "aiohttp/", "_unary (")),
    ("request: read, parse, check, input bound, fingerprint", ("read_request (",)),
    ("call path: attribution, CallRequest, headers, metrics", ("serve (pipeline", "_handler.<locals>",
                                                               "idempotent.<locals>")),
    ("server: uvicorn, Starlette, middlewares, key cache", ("uvicorn/", "starlette/", "KeyPrefetch")),
)
"""The parts of a gateway worker's samples, first match wins (frames as :func:`read_stacks` names them)."""


def parts(stacks: Counter[tuple[str, ...]], groups: tuple[tuple[str, tuple[str, ...]], ...] = GATEWAY_PARTS,
          ) -> list[tuple[str, float]]:
    """Each part's share of all samples (a sample counts in the first part any of whose prefixes is on its stack)."""
    total = sum(stacks.values()) or 1
    shares: Counter[str] = Counter()
    for frames, count in stacks.items():
        label = next((label for label, prefixes in groups
                      if any(frame.startswith(prefix) or prefix in frame for frame in frames for prefix in prefixes)),
                     "other (event loop, upkeep, idle threads)")
        shares[label] += count
    return [(label, 100 * shares[label] / total) for label, _ in (*groups, ("other (event loop, upkeep, idle "
                                                                          "threads)", ()))]


def summarise(stacks: Counter[tuple[str, ...]], *, match: str | None, top: int) -> str:
    """A table of the functions with the most samples (inclusive), their own and inclusive shares."""
    total = sum(stacks.values()) or 1
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for frames, count in stacks.items():
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            incl[frame] += count
    rows = [f for f, _ in incl.most_common() if match is None or match in f][:top]
    lines = [f"{total:,} samples", "| function | own % | incl % |", "|---|---:|---:|"]
    lines += [f"| `{f}` | {100 * own[f] / total:.1f} | {100 * incl[f] / total:.1f} |" for f in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--match", default=None, help="show only frames containing this text")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--own", action="store_true", help="sort by own samples instead of inclusive")
    parser.add_argument("--keep-lines", action="store_true", help="one row per line, not per function")
    parser.add_argument("--parts", action="store_true", help="a gateway worker's samples by part (GATEWAY_PARTS)")
    args = parser.parse_args()
    stacks = read_stacks(args.path, strip_lines=not args.keep_lines)
    if args.parts:
        print(f"{sum(stacks.values()):,} samples\n| part | share % |\n|---|---:|")
        for label, share in parts(stacks):
            print(f"| {label} | {share:.1f} |")
        return
    if args.own:
        own: Counter[str] = Counter()
        for frames, count in stacks.items():
            if frames:
                own[frames[-1]] += count
        total = sum(own.values()) or 1
        for frame, count in own.most_common(args.top):
            if args.match is None or args.match in frame:
                print(f"{100 * count / total:5.1f}  {frame}")
        return
    print(summarise(stacks, match=args.match, top=args.top))


if __name__ == "__main__":
    main()

"""How tight is the input bound? Ceiling-to-actual input tokens on the shipped traces' message shapes.

The traces (data/traces/README.md) carry token counts and labels, no text. For each recorded call
this script rebuilds a request of the same shape and size from ChatDev's own text: the system
message is the calling agent's role prompt (CompanyConfig/Default/RoleConfig.json), the user
message is the phase prompt (PhaseConfig.json) followed by the files the run itself produced
(WareHouse/<run>/: code, manuals, requirements), cut so that the request has exactly the recorded
``input_tokens`` by an exact tokenizer (``bpe-openai``: cl100k_base for gpt-3.5/gpt-4 and
text-embedding-ada-002, o200k_base for gpt-4o-mini; Claude and Llama have no exact tokenizer
that ships its vocabulary, so cl100k stands in for them, marked "proxy"). Chat framing follows
OpenAI's cookbook: 3 tokens per message + the role's tokens, 3 to prime the reply.

The ratio reported is ``request_input_tokens_max(body) / billed tokens of the rebuilt body``
(1.0 would be exact; below 1.0 would be an under-count, a bug). The same for the gateway
benchmark's request (benchmarks/bench_gateway.py).

A second table (issue 14, "Ceilings") puts that byte bound (before) beside the bound a call is held
on near a budget's edge (after): :func:`~comptroller.domain.exact_tokens.exact_input_tokens_max`
for the models with an exact tokenizer (OpenAI's, through ``bpe-openai``), the byte bound for the
others (Claude and Llama: no exact tokenizer ships, so nothing changes for them).

Run:
    python3 benchmarks/bench_input_bound.py --chatdev /path/to/ChatDev.git [--write]

``--chatdev`` is a git clone of OpenBMB/ChatDev (a bare git directory or a work tree);
each run's files are read at the commit its trace records name (``source`` field).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import bpe_openai

from comptroller.domain.exact_tokens import exact_input_tokens_max
from comptroller.domain.tokens import request_input_tokens_max
from comptroller.exact_input import count_tokens, input_recount
from markdown_block import update_block

ROOT = Path(__file__).resolve().parents[1]
TEXT_EXTENSIONS = (".py", ".js", ".html", ".css", ".java", ".cpp", ".c", ".h", ".ts", ".go", ".md", ".txt")
CL100K = bpe_openai.get_encoding("cl100k_base")
O200K = bpe_openai.get_encoding("o200k_base")


def family(record: dict[str, Any]) -> tuple[str, Any]:
    """(family label, exact or proxy encoding) of a recorded call."""
    model = record.get("x_model_resolved") or "gpt-3.5-turbo-16k-0613"  # README: ChatDev's default label
    if model.startswith("text-embedding"):
        return "text-embedding-ada-002 (cl100k, embeddings)", CL100K
    if model.startswith("gpt-4o-mini"):
        return "gpt-4o-mini (o200k)", O200K
    if model.startswith("gpt-4"):
        return "gpt-4 (cl100k)", CL100K
    if model.startswith("gpt-3.5"):
        return "gpt-3.5-turbo (cl100k)", CL100K
    if model.startswith("claude"):
        return "claude-3/3.5 sonnet (cl100k proxy)", CL100K
    return "llama-3 (cl100k proxy)", CL100K


class ChatDevText:
    """ChatDev's role and phase prompts, and each run's own files, read from a git clone."""

    def __init__(self, git_dir: Path) -> None:
        self.git_dir = git_dir
        self.roles: dict[str, list[str]] = json.loads(self._show("chatdev1.0", "CompanyConfig/Default/RoleConfig.json"))
        self.phases: dict[str, Any] = json.loads(self._show("chatdev1.0", "CompanyConfig/Default/PhaseConfig.json"))
        chain = json.loads(self._show("chatdev1.0", "CompanyConfig/Default/ChatChainConfig.json"))
        self.background = chain.get("background_prompt", "")
        self._runs: dict[str, tuple[str, str]] = {}

    def _git(self, *args: str) -> str:
        return subprocess.run(["git", "--git-dir", str(self.git_dir), *args], check=True, capture_output=True,
                              text=True, errors="replace", timeout=60).stdout

    def _show(self, commit: str, path: str) -> str:
        return self._git("show", f"{commit}:{path}")

    def run(self, source: str) -> tuple[str, str]:
        """(task prompt, concatenated files) of the run a ``source`` field names."""
        commit, _, log_path = source.split("@", 1)[1].partition(":")
        folder = log_path.rsplit("/", 1)[0]
        if folder not in self._runs:
            names = [n for n in self._git("ls-tree", "-r", "--name-only", commit, "--", folder + "/").splitlines() if n]
            task = next((self._show(commit, n) for n in names if n.endswith(".prompt")), "")
            files = [f"{n.rsplit('/', 1)[1]}\n```\n{self._show(commit, n)}\n```" for n in names
                     if n.endswith(TEXT_EXTENSIONS) and not n.endswith("meta.txt")]
            self._runs[folder] = (task.strip(), "\n\n".join(files))
        return self._runs[folder]

    def system_prompt(self, agent: str, task: str) -> str:
        lines = self.roles.get(agent) or self.roles["Chief Executive Officer"]
        return "\n".join(lines).replace("{chatdev_prompt}", self.background).replace("{task}", task)

    def phase_prompt(self, phase: str, task: str) -> str:
        config = self.phases.get(phase) or self.phases["CodeReviewComment"]
        return "\n".join(config["phase_prompt"]).replace("{task}", task)


def _cut(encoding: Any, text: str, tokens: int) -> str:
    """A prefix of ``text`` (repeated as needed) of about ``tokens`` tokens, never more."""
    ids = encoding.encode_ordinary(text)
    while len(ids) < tokens:
        ids = ids + ids
    out = encoding.decode(ids[:tokens])
    while len(encoding.encode_ordinary(out)) > tokens:
        out = out[:-1]
    return out


def chat_tokens(encoding: Any, messages: list[dict[str, str]]) -> int:
    """Billed prompt tokens of a chat request by OpenAI's cookbook rule."""
    return 3 + sum(3 + len(encoding.encode_ordinary(m["role"])) + len(encoding.encode_ordinary(m["content"]))
                   for m in messages)


def rebuild(record: dict[str, Any], text: ChatDevText) -> tuple[dict[str, Any], str, int]:
    """(request body, api, billed tokens) of a request shaped like ``record``."""
    _, encoding = family(record)
    task, files = text.run(record["source"])
    target = record["input_tokens"]
    if (record.get("x_model_resolved") or "").startswith("text-embedding"):
        content = _cut(encoding, task + "\n" + files, target)
        body = {"model": record["x_model_resolved"], "input": content}
        return body, "embeddings", len(encoding.encode_ordinary(content))
    system = _cut(encoding, text.system_prompt(record["agent"], task), max(0, target - 11) // 2)
    system_tokens = len(encoding.encode_ordinary(system))
    user_pool = text.phase_prompt(record["phase"], task) + "\n\n" + files
    user = _cut(encoding, user_pool, max(1, target - 11 - system_tokens))
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    model = record.get("x_model_resolved") or "gpt-3.5-turbo-16k-0613"
    return {"model": model, "messages": messages, "max_tokens": 100}, "chat", chat_tokens(encoding, messages)


def held_bound(body: dict[str, Any], api: str) -> int:
    """The input bound a call is held on near a budget's edge: the exact recount where the model has one."""
    by_bytes = request_input_tokens_max(body, api=api)  # type: ignore[arg-type]
    recount = input_recount(body, api=api)
    exact = recount(body["model"]) if recount is not None else None
    return by_bytes if exact is None else min(by_bytes, exact)


def _row(label: str, ratios: list[float], bound: int, billed: int, gap: int) -> dict[str, Any]:
    values = sorted(ratios)
    return {"family": label, "calls": len(values), "min": values[0], "p50": statistics.median(values),
            "p95": values[int(0.95 * (len(values) - 1))], "max": values[-1], "overall": bound / billed, "gap": gap}


def measure(records: list[dict[str, Any]], text: ChatDevText) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows per model family (calls, ratio percentiles, overall ratio, worst recorded-vs-rebuilt gap), for the
    byte bound and for the bound held near an edge."""
    ratios: dict[str, list[float]] = defaultdict(list)
    held: dict[str, list[float]] = defaultdict(list)
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    gap: dict[str, int] = defaultdict(int)
    for record in records:
        label, _ = family(record)
        body, api, billed = rebuild(record, text)
        bound, tight = request_input_tokens_max(body, api=api), held_bound(body, api)  # type: ignore[arg-type]
        assert billed <= tight <= bound, (label, billed, tight, bound)
        ratios[label].append(bound / billed)
        held[label].append(tight / billed)
        totals[label][0] += bound
        totals[label][1] += tight
        totals[label][2] += billed
        gap[label] = max(gap[label], abs(billed - record["input_tokens"]))
    before = [_row(label, ratios[label], totals[label][0], totals[label][2], gap[label]) for label in sorted(ratios)]
    after = [_row(label, held[label], totals[label][1], totals[label][2], gap[label]) for label in sorted(held)]
    return before, after


def benchmark_prompt_rows() -> tuple[dict[str, Any], dict[str, Any]]:
    """The gateway benchmark's request (bench_gateway.py) on gpt-4o-mini (o200k): (byte bound row, held row)."""
    messages = [{"role": "user", "content": "Benchmark request 000000001."}]
    body = {"model": "gpt-4o-mini", "messages": messages, "max_tokens": 16}
    billed = chat_tokens(O200K, messages)
    label = "bench_gateway.py prompt, gpt-4o-mini (o200k)"
    rows = []
    for bound in (request_input_tokens_max(body, api="chat"), held_bound(body, "chat")):
        rows.append(_row(label, [bound / billed], bound, billed, 0))
    return rows[0], rows[1]


def cpu_us_per_call(repeat: int = 2000, *, exact: bool = False) -> str:
    """CPU microseconds of one bound, on a 1 KB and a 100 KB chat body (median of 5 runs)."""
    out = []
    for size in (1_000, 100_000):
        body = {"model": "gpt-4o-mini", "max_tokens": 64, "messages": [
            {"role": "system", "content": "You are a careful assistant. " * 4},
            {"role": "user", "content": ("lorem ipsum dolor sit amet, " * (size // 28 + 1))[:size]}]}
        runs = max(20, repeat * 1_000 // size)
        samples = []
        for _ in range(5):
            start = time.process_time()
            for _ in range(runs):
                if exact:
                    exact_input_tokens_max(body, api="chat", encoding="o200k_base", count=count_tokens)
                else:
                    request_input_tokens_max(body, api="chat")
            samples.append((time.process_time() - start) / runs * 1e6)
        out.append(f"{size // 1000} KB body: {statistics.median(samples):.1f} us")
    name = "exact_input_tokens_max`, chat, o200k" if exact else "request_input_tokens_max`, chat"
    return f"CPU per bound (`{name}): " + ", ".join(out) + "."



def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| family (tokenizer) | calls | min | p50 | p95 | max | sum(bound)/sum(billed) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['family']} | {r['calls']} | {r['min']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} | {r['max']:.2f} "
              f"| {r['overall']:.2f} |" for r in rows]
    return "\n".join(lines)


def before_after(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    """The byte bound's and the held bound's ratios to the billed tokens, side by side per family."""
    lines = ["| family (tokenizer) | calls | before: p50 | before: max | before: sum ratio | after: min | after: p50 "
             "| after: max | after: sum ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for old, new in zip(before, after, strict=True):
        lines.append(f"| {old['family']} | {old['calls']} | {old['p50']:.2f} | {old['max']:.2f} | {old['overall']:.2f} "
                     f"| {new['min']:.2f} | {new['p50']:.2f} | {new['max']:.2f} | {new['overall']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--chatdev", type=Path, required=True, help="a git clone of OpenBMB/ChatDev")
    parser.add_argument("--traces", type=Path, nargs="+", default=[ROOT / "data/traces/chatdev_warehouse.jsonl"])
    parser.add_argument("--write", action="store_true", help="update the block in BENCHMARKS.md")
    args = parser.parse_args()
    git_dir = args.chatdev / ".git" if (args.chatdev / ".git").exists() else args.chatdev
    text = ChatDevText(git_dir)
    records = [json.loads(line) for path in args.traces for line in path.read_text().splitlines() if line.strip()]
    before, after = measure(records, text)
    prompt_before, prompt_after = benchmark_prompt_rows()
    rows = [*before, prompt_before]
    out = table(rows)
    worst_gap = max(r["gap"] for r in rows)
    note = (f"{len(records)} calls; each rebuilt request is within {worst_gap} tokens of its recorded `input_tokens`. "
            f"Machine: {platform.machine()}, Python {platform.python_version()}, bpe-openai "
            f"{bpe_openai.__version__}.")
    note += " " + cpu_us_per_call()
    compared = before_after([*before, prompt_before], [*after, prompt_after])
    exact_note = f"Same run. Every call: billed <= held <= byte bound (asserted). {cpu_us_per_call(exact=True)}"
    print(out)
    print(note)
    print(compared)
    print(exact_note)
    if args.write:
        update_block(ROOT / "BENCHMARKS.md", "input-bound", f"{out}\n\n{note}")
        update_block(ROOT / "BENCHMARKS.md", "exact-input-bound", f"{compared}\n\n{exact_note}")


if __name__ == "__main__":
    main()

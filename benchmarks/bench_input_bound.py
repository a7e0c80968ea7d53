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

from comptroller.domain.tokens import request_input_tokens_max
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


def measure(records: list[dict[str, Any]], text: ChatDevText) -> list[dict[str, Any]]:
    """One row per model family: calls, ratio percentiles, overall ratio, worst recorded-vs-rebuilt gap."""
    ratios: dict[str, list[float]] = defaultdict(list)
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    gap: dict[str, int] = defaultdict(int)
    for record in records:
        label, _ = family(record)
        body, api, billed = rebuild(record, text)
        bound = request_input_tokens_max(body, api=api)  # type: ignore[arg-type]
        ratios[label].append(bound / billed)
        totals[label][0] += bound
        totals[label][1] += billed
        gap[label] = max(gap[label], abs(billed - record["input_tokens"]))
    rows = []
    for label in sorted(ratios):
        values = sorted(ratios[label])
        rows.append({"family": label, "calls": len(values), "min": values[0], "p50": statistics.median(values),
                     "p95": values[int(0.95 * (len(values) - 1))], "max": values[-1],
                     "overall": totals[label][0] / totals[label][1], "gap": gap[label]})
    return rows


def benchmark_prompt_row() -> dict[str, Any]:
    """The gateway benchmark's request (bench_gateway.py) on gpt-4o-mini (o200k)."""
    messages = [{"role": "user", "content": "Benchmark request 000000001."}]
    bound = request_input_tokens_max({"model": "gpt-4o-mini", "messages": messages, "max_tokens": 16}, api="chat")
    billed = chat_tokens(O200K, messages)
    ratio = bound / billed
    return {"family": "bench_gateway.py prompt, gpt-4o-mini (o200k)", "calls": 1, "min": ratio, "p50": ratio,
            "p95": ratio, "max": ratio, "overall": ratio, "gap": 0}


def cpu_us_per_call(repeat: int = 2000) -> str:
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
                request_input_tokens_max(body, api="chat")
            samples.append((time.process_time() - start) / runs * 1e6)
        out.append(f"{size // 1000} KB body: {statistics.median(samples):.1f} us")
    return "CPU per bound (`request_input_tokens_max`, chat): " + ", ".join(out) + "."


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| family (tokenizer) | calls | min | p50 | p95 | max | sum(bound)/sum(billed) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['family']} | {r['calls']} | {r['min']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} | {r['max']:.2f} "
              f"| {r['overall']:.2f} |" for r in rows]
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
    rows = [*measure(records, text), benchmark_prompt_row()]
    out = table(rows)
    worst_gap = max(r["gap"] for r in rows)
    note = (f"{len(records)} calls; each rebuilt request is within {worst_gap} tokens of its recorded `input_tokens`. "
            f"Machine: {platform.machine()}, Python {platform.python_version()}, bpe-openai "
            f"{bpe_openai.__version__}.")
    note += " " + cpu_us_per_call()
    print(out)
    print(note)
    if args.write:
        update_block(ROOT / "BENCHMARKS.md", "input-bound", f"{out}\n\n{note}")


if __name__ == "__main__":
    main()

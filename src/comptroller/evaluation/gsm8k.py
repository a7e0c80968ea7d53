"""RouteLLM's labelled GSM8K answers (``data/routing/``): one :class:`Item` per test question.

Files (provenance in ``data/routing/README.md``):

* ``gsm8k_responses.csv``: per question, the answer of Mixtral-8x7B-Instruct (cheap) and
  GPT-4-1106-preview (strong), each labelled correct or not (RouteLLM graded the last
  integer of the answer against the reference);
* ``gsm8k_contaminated_prompts.jsonl``: test questions RouteLLM found in its router
  training data (``eval_prompt``);
* ``gsm8k_fewshot_train8.jsonl``: the first 8 GSM8K training examples, which RouteLLM's
  ``generate_responses.py`` put in front of every question (8-shot prompt), needed to
  estimate the input tokens each call paid for.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CHEAP_MODEL", "STRONG_MODEL", "Dataset", "Item", "load_gsm8k"]

CHEAP_MODEL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG_MODEL = "gpt-4-1106-preview"
RESPONSES = "gsm8k_responses.csv"
CONTAMINATED = "gsm8k_contaminated_prompts.jsonl"
FEW_SHOT = "gsm8k_fewshot_train8.jsonl"


@dataclass(frozen=True, slots=True)
class Item:
    """One question with both models' answers and correctness labels."""

    question: str
    cheap_answer: str
    strong_answer: str
    cheap_correct: bool
    strong_correct: bool
    contaminated: bool


@dataclass(frozen=True, slots=True)
class Dataset:
    """The items and the few-shot prefix every prompt started with."""

    items: tuple[Item, ...]
    few_shot_prefix: str

    def prompt(self, item: Item) -> str:
        """The user message RouteLLM sent: the 8-shot prefix, then ``Question: ...\\nAnswer:``."""
        return f"{self.few_shot_prefix}Question: {item.question}\nAnswer:"


def _label(value: str, where: str) -> bool:
    if value not in ("True", "False"):
        raise ValueError(f"{where}: a correctness label must be True or False, got {value!r}")
    return value == "True"


def _few_shot(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in rows)


def load_gsm8k(directory: str | Path, *, include_contaminated: bool = False) -> Dataset:
    """Read the shipped GSM8K evaluation data.

    Args:
        directory: the folder holding the three files (``data/routing``).
        include_contaminated: keep the questions RouteLLM marks as contaminated
            (default: drop them, as its README advises for router evaluation).

    Raises:
        FileNotFoundError: naming a missing file.
        ValueError: on a missing column or a label other than True/False.
    """
    folder = Path(directory)
    for name in (RESPONSES, CONTAMINATED, FEW_SHOT):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: missing; eval-cascade needs {RESPONSES}, {CONTAMINATED} and "
                                    f"{FEW_SHOT} (see data/routing/README.md)")
    contaminated = {json.loads(line)["eval_prompt"]
                    for line in (folder / CONTAMINATED).read_text(encoding="utf-8").splitlines() if line.strip()}
    csv.field_size_limit(sys.maxsize)
    items = []
    with (folder / RESPONSES).open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        needed = {"prompt", CHEAP_MODEL, STRONG_MODEL, f"{CHEAP_MODEL}_response", f"{STRONG_MODEL}_response"}
        missing = needed - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{folder / RESPONSES}: missing columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            where = f"{folder / RESPONSES} line {line}"
            items.append(Item(row["prompt"], row[f"{CHEAP_MODEL}_response"], row[f"{STRONG_MODEL}_response"],
                              _label(row[CHEAP_MODEL], where), _label(row[STRONG_MODEL], where),
                              row["prompt"] in contaminated))
    kept = tuple(i for i in items if include_contaminated or not i.contaminated)
    return Dataset(kept, _few_shot(folder / FEW_SHOT))

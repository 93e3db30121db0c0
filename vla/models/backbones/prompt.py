"""Prompt formats: how an instruction (and, for pi0.5, the state) becomes the text a VLM reads.

Each format is a small function registered by name; a backbone's ``prompt`` option picks one.
They reproduce the text that LeRobot's processors hand the tokenizer, so that the same
instruction gives the same token ids here and there:

- ``task``: the instruction as given;
- ``newline``: the instruction ending in one ``"\\n"`` (LeRobot's ``NewLineTaskProcessorStep``,
  pi0 and SmolVLA; PaliGemma's own prompt format);
- ``pi05``: ``"Task: <cleaned>, State: <bins>;\\nAction: "`` with the normalized state cut into
  256 bins (``Pi05PrepareStateTokenizerProcessorStep``). It reads the state, so it goes with
  ``state_mode="prompt"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

STATE_BINS = 256


@dataclass(frozen=True)
class PromptFormat:
    render: Callable[[str, str | None], str]  # (instruction, state text or None) -> prompt
    uses_state: bool


PROMPTS: dict[str, PromptFormat] = {}


def register(name: str, uses_state: bool = False):
    def wrap(fn):
        PROMPTS[name] = PromptFormat(fn, uses_state)
        return fn

    return wrap


def lookup_prompt(name: str) -> PromptFormat:
    if name not in PROMPTS:
        raise KeyError(f"unknown prompt format {name!r}; known: {sorted(PROMPTS)}")
    return PROMPTS[name]


@register("task")
def task_only(task: str, state: str | None) -> str:
    return task


@register("newline")
def task_newline(task: str, state: str | None) -> str:
    return task if task.endswith("\n") else task + "\n"


@register("pi05", uses_state=True)
def pi05(task: str, state: str | None) -> str:
    cleaned = task.strip().replace("_", " ").replace("\n", " ")
    return f"Task: {cleaned}, State: {state};\nAction: "


def discretize_state(state: torch.Tensor, mask: torch.Tensor | None = None) -> list[str]:
    """Normalized state (B, S) in about [-1, 1] -> one string of bin indices per sample.

    ``np.digitize(x, linspace(-1, 1, 257)[:-1]) - 1`` as openpi and LeRobot do it (values
    below -1 give -1, values at or above 1 - 2/256 give 255), in float64 like numpy.
    Dims where ``mask`` is False (padding) are left out.
    """
    edges = torch.linspace(-1.0, 1.0, STATE_BINS + 1, dtype=torch.float64, device=state.device)[:-1]
    bins = torch.bucketize(state.detach().double(), edges, right=True) - 1  # (B, S)
    rows = bins.cpu().tolist()
    keep = mask.bool().cpu().tolist() if mask is not None else [[True] * len(r) for r in rows]
    return [" ".join(str(b) for b, k in zip(row, m, strict=True) if k) for row, m in zip(rows, keep, strict=True)]

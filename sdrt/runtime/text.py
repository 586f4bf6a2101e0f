"""Prompt encoding: token windows -> text encoder(s) -> the UNet's conditioning, in diffusers' layout.

SD 1.x / 2.x: `last_hidden_state` of the one text encoder. SDXL: `penultimate_hidden_state` of both
encoders concatenated on the feature axis, the second encoder's pooled `text_embeds` (of the first window,
as ComfyUI does for long prompts), and time ids (original size, crop top-left, target size). With
`force_zeros_for_empty_prompt` and no negative prompt, SDXL's unconditional branch is all zeros.
With CFG the batch is [negative x B, positive x B], the order diffusers' `noise_pred.chunk(2)` expects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..backends.engine import Engine, run_engine
from .tokenizer import ClipTokenizer


@dataclass(frozen=True)
class Conditioning:
    """UNet inputs that depend on the prompt, already in UNet batch order."""

    hidden_states: np.ndarray  # float32 [batch, 77 * windows, dim]
    text_embeds: np.ndarray | None = None  # SDXL pooled embeddings [batch, proj_dim]
    time_ids: np.ndarray | None = None  # SDXL [batch, 6]

    def __post_init__(self) -> None:
        for array in (self.hidden_states, self.text_embeds, self.time_ids):
            if array is not None:
                array.setflags(write=False)  # constant for the whole loop: engines copy it once

    def feeds(self) -> dict[str, np.ndarray]:
        out = {"encoder_hidden_states": self.hidden_states}
        if self.text_embeds is not None:
            out["text_embeds"] = self.text_embeds
            out["time_ids"] = self.time_ids
        return out


@dataclass(frozen=True)
class PromptSpec:
    """What one request's conditioning depends on."""

    prompt: str
    negative: str | None
    batch: int
    cfg: bool  # with the unconditional branch (uses_cfg)
    size: tuple[int, int]  # (height, width) in pixels, for SDXL's time ids


@dataclass(frozen=True)
class TextBranch:
    """One tokenizer + text encoder pair and which of its outputs the UNet reads."""

    tokenizer: ClipTokenizer
    encoder: Engine
    hidden_output: str  # "last_hidden_state" (SD1/2) or "penultimate_hidden_state" (SDXL)
    pooled_output: str | None = None  # "text_embeds" on SDXL's second encoder


class PromptEncoder:
    """Turns (prompt, negative prompt) into a `Conditioning` for a batch."""

    def __init__(self, branches: list[TextBranch], force_zeros_for_empty_prompt: bool = False) -> None:
        self.branches = branches
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self.is_sdxl = any(b.pooled_output for b in branches)

    def encode(self, prompt: str, negative: str | None, batch: int, cfg: bool,
               size: tuple[int, int]) -> Conditioning:
        """`size` is (height, width) in pixels, for SDXL's time ids."""
        return self.encode_many([PromptSpec(prompt, negative, batch, cfg, size)])[0]

    def encode_many(self, specs: Sequence[PromptSpec]) -> list[Conditioning]:
        """The conditioning of several requests from ONE run of each text encoder: every 77-token window is
        an independent row, so the windows of all texts are stacked and split back per text."""
        plans = []
        for spec in specs:
            zero_negative = spec.cfg and spec.negative is None and self.force_zeros_for_empty_prompt
            texts = [spec.prompt] if not spec.cfg or zero_negative else [spec.negative or "", spec.prompt]
            windows = max(b.tokenizer.num_chunks(t) for b in self.branches for t in texts)
            plans.append((texts, windows, zero_negative))
        encoded = iter(self._encode_texts([(t, windows) for texts, windows, _ in plans for t in texts]))
        return [self._conditioning(spec, [next(encoded) for _ in texts], zero_negative)
                for spec, (texts, _, zero_negative) in zip(specs, plans)]

    def _conditioning(self, spec: PromptSpec, encoded: list[tuple[np.ndarray, np.ndarray | None]],
                      zero_negative: bool) -> Conditioning:
        hidden = np.stack([h for h, _ in encoded])
        pooled = np.stack([p for _, p in encoded]) if self.is_sdxl else None
        if zero_negative:
            hidden = np.concatenate([np.zeros_like(hidden), hidden])
            pooled = None if pooled is None else np.concatenate([np.zeros_like(pooled), pooled])
        # rows are [negative, positive] (or [positive]); repeat each row `batch` times, keeping that order
        hidden = np.repeat(hidden, spec.batch, axis=0)
        if not self.is_sdxl:
            return Conditioning(hidden)
        pooled = np.repeat(pooled, spec.batch, axis=0)
        height, width = spec.size
        time_ids = np.tile(np.array([height, width, 0, 0, height, width], dtype=np.float32), (len(pooled), 1))
        return Conditioning(hidden, pooled, time_ids)

    def _encode_texts(self, texts: list[tuple[str, int]]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Per (text, windows): hidden states [77 * windows, dim] (all encoders concatenated on the feature
        axis) and the pooled embedding of its first window (SDXL), from one run per encoder."""
        starts = np.cumsum([0] + [w for _, w in texts])
        hidden: list[list[np.ndarray]] = [[] for _ in texts]
        pooled: list[np.ndarray | None] = [None] * len(texts)
        for branch in self.branches:
            ids = np.concatenate([branch.tokenizer.windows(t, w) for t, w in texts])  # [sum(windows), 77]
            out = run_engine(branch.encoder, {"input_ids": ids})
            states = np.asarray(out[branch.hidden_output], dtype=np.float32)
            for i, (_, w) in enumerate(texts):
                hidden[i].append(states[starts[i]:starts[i] + w].reshape(w * states.shape[1], states.shape[2]))
                if branch.pooled_output:
                    pooled[i] = np.asarray(out[branch.pooled_output], dtype=np.float32)[starts[i]]
        return [(np.concatenate(h, axis=-1), p) for h, p in zip(hidden, pooled)]

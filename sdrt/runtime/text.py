"""Prompt encoding: token windows -> text encoder(s) -> the UNet's conditioning, in diffusers' layout.

SD 1.x / 2.x: `last_hidden_state` of the one text encoder. SDXL: `penultimate_hidden_state` of both
encoders concatenated on the feature axis, the second encoder's pooled `text_embeds` (of the first window,
as ComfyUI does for long prompts), and time ids (original size, crop top-left, target size). With
`force_zeros_for_empty_prompt` and no negative prompt, SDXL's unconditional branch is all zeros.
With CFG the batch is [negative x B, positive x B], the order diffusers' `noise_pred.chunk(2)` expects.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        zero_negative = cfg and negative is None and self.force_zeros_for_empty_prompt
        texts = [prompt] if not cfg or zero_negative else [negative or "", prompt]
        windows = max(b.tokenizer.num_chunks(t) for b in self.branches for t in texts)
        hidden, pooled = self._encode_texts(texts, windows)
        if zero_negative:
            hidden = np.concatenate([np.zeros_like(hidden), hidden])
            pooled = None if pooled is None else np.concatenate([np.zeros_like(pooled), pooled])
        # rows are [negative, positive] (or [positive]); repeat each row `batch` times, keeping that order
        hidden = np.repeat(hidden, batch, axis=0)
        if not self.is_sdxl:
            return Conditioning(hidden)
        pooled = np.repeat(pooled, batch, axis=0)
        height, width = size
        time_ids = np.tile(np.array([height, width, 0, 0, height, width], dtype=np.float32), (len(pooled), 1))
        return Conditioning(hidden, pooled, time_ids)

    def _encode_texts(self, texts: list[str], windows: int) -> tuple[np.ndarray, np.ndarray | None]:
        """[len(texts), 77 * windows, dim] hidden states (all encoders concatenated) and pooled embeddings."""
        per_branch, pooled = [], None
        for branch in self.branches:
            ids = np.concatenate([branch.tokenizer.windows(t, windows) for t in texts])  # [texts*windows, 77]
            out = run_engine(branch.encoder, {"input_ids": ids})
            states = np.asarray(out[branch.hidden_output], dtype=np.float32)
            per_branch.append(states.reshape(len(texts), windows * states.shape[1], states.shape[2]))
            if branch.pooled_output:
                # first window of each text: rows 0, windows, 2*windows, ...
                pooled = np.asarray(out[branch.pooled_output], dtype=np.float32)[::windows]
        return np.concatenate(per_branch, axis=-1), pooled

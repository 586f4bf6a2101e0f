"""Prompt encoding: token windows -> text encoder(s) -> the UNet's conditioning, in diffusers' layout.

SD 1.x / 2.x: `last_hidden_state` of the one text encoder. SDXL: `penultimate_hidden_state` of both
encoders concatenated on the feature axis, the second encoder's pooled `text_embeds` (of the first window,
as ComfyUI does for long prompts), and time ids (original size, crop top-left, target size). With
`force_zeros_for_empty_prompt` and no negative prompt, SDXL's unconditional branch is all zeros.
With CFG the batch is [negative x B, positive x B], the order diffusers' `noise_pred.chunk(2)` expects.

Prompt weighting (A1111's syntax, parsed in sdrt.runtime.prompt_syntax) is applied as A1111's default
"Original" emphasis: per text encoder and per 77-token window, each token's hidden state is multiplied by its
weight, then the window is rescaled so that the mean over all its values is what it was before weighting
(z * (mean(z) / mean(z * w))). BOS, EOS and padding have weight 1; a window whose weights are all 1 is left
untouched (bit-identical to unweighted encoding). The pooled embedding (SDXL) is never weighted.

Clip skip (A1111 numbering: 1 = the last layer, the default) picks another output of the same encoder run:
`clip_skip_N` holds what the UNet reads at clip skip N (SD 1/2: the final layer norm of hidden_states[-N];
SDXL: hidden_states[-(N+1)], no norm, as diffusers' `clip_skip` = N - 1). It applies to the positive and the
negative prompt alike, as in A1111 and ComfyUI (diffusers applies it to the positive prompt only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..backends.engine import Engine, run_rows
from ..errors import UserError
from ..manifest import clip_skip_output
from .prompt_syntax import literal, parse_prompt_attention, token_windows
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
    weighting: bool = True  # read A1111's emphasis syntax; False: the text is taken literally
    clip_skip: int = 1  # A1111 numbering: 1 = last layer


@dataclass(frozen=True)
class TextBranch:
    """One tokenizer + text encoder pair and which of its outputs the UNet reads."""

    tokenizer: ClipTokenizer
    encoder: Engine
    hidden_output: str  # "last_hidden_state" (SD1/2) or "penultimate_hidden_state" (SDXL)
    pooled_output: str | None = None  # "text_embeds" on SDXL's second encoder

    def output_for(self, clip_skip: int) -> str:
        return self.hidden_output if clip_skip == 1 else clip_skip_output(clip_skip)

    def max_clip_skip(self) -> int:
        """The largest clip skip this encoder's graph has an output for (1 for bundles exported before clip
        skip existed)."""
        outputs = getattr(self.encoder, "outputs", {})
        deepest = 1
        while clip_skip_output(deepest + 1) in outputs:
            deepest += 1
        return deepest

    def layout(self, text: str, weighting: bool) -> list[tuple[list[int], list[float]]]:
        """(token ids, weights) per 75-token window of `text` for this branch's tokenizer."""
        segments = parse_prompt_attention(text) if weighting else literal(text)
        return token_windows(segments, self.tokenizer.token_ids, self.tokenizer.chunk_size)


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
        plans, jobs = [], []
        for spec in specs:
            self.check_clip_skip(spec.clip_skip)
            zero_negative = spec.cfg and spec.negative is None and self.force_zeros_for_empty_prompt
            texts = [spec.prompt] if not spec.cfg or zero_negative else [spec.negative or "", spec.prompt]
            layouts = [[b.layout(t, spec.weighting) for b in self.branches] for t in texts]
            windows = max(len(layout) for per_text in layouts for layout in per_text)
            plans.append((len(texts), zero_negative))
            jobs += [_TextJob(per_text, windows, spec.clip_skip) for per_text in layouts]
        encoded = iter(self._encode_texts(jobs))
        return [self._conditioning(spec, [next(encoded) for _ in range(count)], zero_negative)
                for spec, (count, zero_negative) in zip(specs, plans)]

    def max_clip_skip(self) -> int:
        """The largest clip skip every text encoder of the bundle has an output for (1: none beyond the last)."""
        return min(b.max_clip_skip() for b in self.branches)

    def check_clip_skip(self, clip_skip: int) -> None:
        """Refuse a clip skip the bundle's text encoder graphs have no output for."""
        if clip_skip == 1:
            return
        deepest = self.max_clip_skip()
        if deepest == 1:
            raise UserError(f"--clip-skip {clip_skip} needs the hidden states of earlier text-encoder layers, "
                            "which this bundle lacks (exported by an older sdrt): re-export the model with "
                            "`sdrt export` to use clip skip")
        if clip_skip > deepest:
            raise UserError(f"--clip-skip {clip_skip} is deeper than the text-encoder layers this bundle "
                            f"exported: choose --clip-skip 1 to {deepest}")

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

    def _encode_texts(self, jobs: list["_TextJob"]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Per text: hidden states [77 * windows, dim] (all encoders concatenated on the feature axis, each
        weighted) and the pooled embedding of its first window (SDXL), from one run per encoder."""
        starts = np.cumsum([0] + [job.windows for job in jobs])
        hidden: list[list[np.ndarray]] = [[] for _ in jobs]
        pooled: list[np.ndarray | None] = [None] * len(jobs)
        for b, branch in enumerate(self.branches):
            tokenizer = branch.tokenizer
            ids = np.concatenate([tokenizer.pack([w for w, _ in job.layouts[b]], job.windows)
                                  for job in jobs])  # [sum(windows), 77]
            out = run_rows(branch.encoder, {"input_ids": ids})  # split by a TensorRT profile's max batch
            for i, job in enumerate(jobs):
                rows = slice(starts[i], starts[i] + job.windows)
                states = np.asarray(out[branch.output_for(job.clip_skip)][rows], dtype=np.float32)
                for window, (_, weights) in enumerate(job.layouts[b]):
                    multipliers = np.ones(tokenizer.max_length)
                    multipliers[1:1 + len(weights)] = weights
                    states[window] = emphasize(states[window], multipliers)
                hidden[i].append(states.reshape(job.windows * states.shape[1], states.shape[2]))
                if branch.pooled_output:
                    pooled[i] = np.asarray(out[branch.pooled_output], dtype=np.float32)[starts[i]]
        return [(np.concatenate(h, axis=-1), p) for h, p in zip(hidden, pooled)]


@dataclass(frozen=True)
class _TextJob:
    """One text to encode: its windows per branch, the window count it is padded to, its clip skip."""

    layouts: list[list[tuple[list[int], list[float]]]]  # per branch: (token ids, weights) per window
    windows: int
    clip_skip: int


def emphasize(z: np.ndarray, multipliers: np.ndarray) -> np.ndarray:
    """A1111's "Original" emphasis of one window's hidden states z [77, dim]: each token's state times its
    weight, then the whole window rescaled to its original mean, which keeps the UNet's input in the range it
    was trained on. Computed in float64 (the mean of a layer-normed window is a small difference of large
    sums). Unit weights return z itself, so unweighted prompts stay bit-identical."""
    if np.all(multipliers == 1):
        return z
    with np.errstate(over="ignore", invalid="ignore"):  # an infinite weight is refused just below
        weighted = z.astype(np.float64) * multipliers[:, None]
        original, new = z.mean(dtype=np.float64), weighted.mean()
    if new == 0 or not np.isfinite(new):
        raise UserError("the prompt's weights cancel out its embedding (its mean becomes 0): use weights "
                        "nearer 1, e.g. (word:1.3) or (word:0.7)")
    return (weighted * (original / new)).astype(np.float32)

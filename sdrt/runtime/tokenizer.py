"""CLIP tokenization with the `tokenizers` package, and prompts longer than one text-encoder window.

CLIP sees 77 tokens: BOS, up to 75 prompt tokens, EOS, padding. diffusers cuts longer prompts off; we split
the prompt's tokens into chunks of 75, give each chunk its own BOS/EOS/padding, encode the chunks as a batch
and concatenate their hidden states along the sequence axis (the convention of AUTOMATIC1111 and ComfyUI).
A prompt of up to 75 tokens gives exactly diffusers' single window, so short prompts keep parity.

Multi-vector textual-inversion embeddings (baked in by `sdrt export --embedding`) are named in prompts by one
word NAME that stands for the tokens NAME NAME_1 ... NAME_{n-1}; prompt_expansions.json beside tokenizer.json
lists them, and prompts are expanded as diffusers' `maybe_convert_prompt` does before tokenizing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..json_limits import loads_bounded
from ..manifest import EXPANSIONS_FILE, BundleError

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


class ClipTokenizer:
    """One CLIP tokenizer (a tokenizer.json) producing fixed-size windows of token ids."""

    def __init__(self, path: str | Path, max_length: int = 77) -> None:
        from tokenizers import Tokenizer

        path = Path(path)
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
            raise BundleError(f"cannot read the tokenizer {path} ({str(exc)[:120]}): re-export the model") from None
        self.max_length = max_length
        self.bos_id = self._required_id(BOS_TOKEN, path)
        self.eos_id = self._required_id(EOS_TOKEN, path)
        self.pad_id = _pad_id(self._tok, path.parent, self.eos_id)
        self._tok.no_padding()  # windows are built by hand below
        self._tok.no_truncation()
        self.expansions = _expansions(path.parent / EXPANSIONS_FILE)

    def _required_id(self, token: str, path: Path) -> int:
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise BundleError(f"tokenizer {path} has no {token} token: it is not a CLIP tokenizer, re-export the model")
        return token_id

    @property
    def chunk_size(self) -> int:
        """Prompt tokens per window (75 for CLIP's 77)."""
        return self.max_length - 2

    def token_ids(self, text: str) -> list[int]:
        """The prompt's tokens without BOS/EOS."""
        return list(self._tok.encode(self.expand(text), add_special_tokens=False).ids)

    def expand(self, text: str) -> str:
        """diffusers' maybe_convert_prompt: each multi-vector embedding NAME the tokenizer finds in the prompt
        is replaced (as text, everywhere) by "NAME NAME_1 ... NAME_{n-1}"."""
        if not self.expansions:
            return text
        found = set(self._tok.encode(text, add_special_tokens=False).tokens)
        for name in sorted(found & self.expansions.keys()):
            text = text.replace(name, self.expansions[name])
        return text

    def num_chunks(self, text: str) -> int:
        return max(1, math.ceil(len(self.token_ids(text)) / self.chunk_size))

    def windows(self, text: str, num_chunks: int | None = None) -> np.ndarray:
        """int32 [num_chunks, max_length]: each window BOS + up to 75 tokens + EOS + padding. Extra windows
        (to match another prompt's length) hold the empty prompt."""
        ids = self.token_ids(text)
        return self.pack([ids[c:c + self.chunk_size] for c in range(0, max(len(ids), 1), self.chunk_size)],
                         num_chunks)

    def pack(self, chunks: list[list[int]], num_chunks: int | None = None) -> np.ndarray:
        """int32 [num_chunks, max_length] from chunks of at most 75 prompt tokens (see `windows`)."""
        num_chunks = num_chunks or len(chunks)
        if num_chunks < len(chunks):
            raise ValueError(f"prompt needs {len(chunks)} windows of {self.chunk_size} tokens, asked for {num_chunks}")
        out = np.full((num_chunks, self.max_length), self.pad_id, dtype=np.int32)
        out[:, 0] = self.bos_id
        out[len(chunks):, 1] = self.eos_id
        for c, part in enumerate(chunks):
            out[c, 1:1 + len(part)] = part
            out[c, 1 + len(part)] = self.eos_id
        return out


def _expansions(path: Path) -> dict[str, str]:
    """NAME -> "NAME NAME_1 ..." from the export, or {} for bundles without multi-vector embeddings."""
    if not path.is_file():
        return {}
    try:
        data = loads_bounded(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {path} ({str(exc)[:120]}): re-export the model (sdrt export)") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise BundleError(f"{path} must map embedding names to their token lists: re-export the model (sdrt export)")
    return data


def _pad_id(tok, folder: Path, default: int) -> int:
    """The padding token: from tokenizer.json's padding section if the exporter kept it, else the pad_token
    of the tokenizer_config.json / special_tokens_map.json saved beside it (SDXL's second tokenizer pads
    with "!", not EOS), else EOS (CLIP's own convention)."""
    padding = tok.padding
    if padding and padding.get("pad_token") and tok.token_to_id(padding["pad_token"]) is not None:
        return tok.token_to_id(padding["pad_token"])
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        config = folder / name
        if not config.is_file():
            continue
        try:
            data = loads_bounded(config.read_bytes())
        except (OSError, ValueError):
            continue
        pad = data.get("pad_token") if isinstance(data, dict) else None
        if isinstance(pad, dict):
            pad = pad.get("content")
        if isinstance(pad, str) and tok.token_to_id(pad) is not None:
            return tok.token_to_id(pad)
    return default

"""The real CLIP byte-pair vocabulary, turned into a transformers CLIPTokenizer without any download.

Tiny test models tokenize prompts exactly like Stable Diffusion: OpenAI's merge list ships in the package
(sdrt/data/tinyshapes/, the file CLIP's own repository and the open-clip-torch wheel carry), so every
install, a fresh clone included, has it; $SDRT_CLIP_VOCAB may point at another copy.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_ENV_VAR = "SDRT_CLIP_VOCAB"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408
_MERGE_COUNT = 49152 - 256 - 2  # merges used by CLIP: lines 1 .. 48894 of the file
PACKAGED_BPE = Path(__file__).resolve().parents[1] / "data" / "tinyshapes" / BPE_FILE_NAME


def locate_clip_bpe(required: bool = True) -> Path | None:
    """$SDRT_CLIP_VOCAB when set (it must name an existing file), else the packaged copy. None (or a
    UserError when `required`) only when the package lost its copy."""
    override = os.environ.get(BPE_ENV_VAR)
    if override:
        if not Path(override).is_file():
            raise UserError(f"{BPE_ENV_VAR}={override} is not a file: point it at {BPE_FILE_NAME} or unset it "
                            "to use the copy sdrt ships")
        return Path(override)
    if PACKAGED_BPE.is_file():
        return PACKAGED_BPE
    if required:
        raise UserError(f"CLIP merge list {PACKAGED_BPE} is missing from this sdrt install: reinstall sdrt, or set "
                        f"{BPE_ENV_VAR} to a copy of {BPE_FILE_NAME} (open-clip-torch ships it as open_clip/"
                        f"{BPE_FILE_NAME})")
    return None


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, in its canonical order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def clip_vocab_and_merges(bpe_path: Path | None) -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary and merges from the merge-list file; without a file, the byte-level base only.

    The byte-level fallback (514 tokens, no merges) keeps the tiny models buildable when an install lost the
    packaged file: prompts then split into single characters, but stay valid CLIP-style token sequences.
    """
    bytes_chars = list(byte_to_unicode().values())
    merges: list[str] = []
    if bpe_path is not None:
        with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = lines[1 : 1 + _MERGE_COUNT]
    tokens = bytes_chars + [c + "</w>" for c in bytes_chars] + ["".join(m.split()) for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_clip_tokenizer(pad_token: str = EOS_TOKEN, bpe_path: Path | None = None) -> "CLIPTokenizer":
    """A transformers CLIPTokenizer over CLIP's vocabulary; SD1 pads with <|endoftext|>, SD2 / SDXL's second
    tokenizer with "!" (id 0)."""
    from transformers import CLIPTokenizer

    if bpe_path is None:
        bpe_path = locate_clip_bpe(required=False)
    vocab, merges = clip_vocab_and_merges(bpe_path)
    tokenizer = CLIPTokenizer(
        vocab=vocab,
        merges=[tuple(m.split()) for m in merges],
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=pad_token,
        model_max_length=77,
    )
    return tokenizer

"""The checkpoint's CLIPTokenizer as a standalone `tokenizers` JSON, so the runtime needs no transformers.

The JSON carries the checkpoint's own padding (to 77 with its pad token: <|endoftext|> for SD1, "!" for
SD2 and SDXL's second tokenizer) and truncation (BOS + 75 tokens + EOS), so `Tokenizer.encode(prompt).ids`
equals `CLIPTokenizer(prompt, padding="max_length", truncation=True).input_ids`. A runtime that splits long
prompts into 77-token chunks calls `no_truncation()` / `no_padding()` on its copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError

PARITY_PROMPTS = (
    "",
    "a photo of an astronaut riding a horse on mars",
    "A  Portrait,  by Greg   Rutkowski!! (masterpiece:1.2), 8k, trending on ArtStation",
    "café crème brûlée, naïve façade — 東京 🌸 <|endoftext|>",
    " ".join(["a very long prompt that keeps going"] * 20),
)


def standalone_tokenizer(tokenizer: Any, max_length: int = 77) -> Any:
    """A `tokenizers.Tokenizer` reproducing `tokenizer` (a transformers CLIPTokenizer) with padding and
    truncation to `max_length` built in."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"tokenizer {type(tokenizer).__name__} has no fast (tokenizers) backend: "
                        "re-save the checkpoint's tokenizer with a current transformers")
    standalone = Tokenizer.from_str(backend.to_str())
    standalone.no_padding()
    standalone.enable_truncation(max_length=max_length)
    standalone.enable_padding(length=max_length, pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token)
    return standalone


def check_tokenizer_parity(standalone: Any, tokenizer: Any, max_length: int = 77,
                           extra_prompts: tuple[str, ...] | list[str] = ()) -> int:
    """Raise when the standalone tokenizer disagrees with transformers on any parity prompt (and on
    `extra_prompts`, e.g. ones using added embedding tokens); return the number of prompts checked."""
    for prompt in (*PARITY_PROMPTS, *extra_prompts):
        expected = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True).input_ids
        got = standalone.encode(prompt).ids
        if list(got) != list(expected):
            raise UserError(f"exported tokenizer differs from the checkpoint's on {prompt[:40]!r}: "
                            "report this with the checkpoint's tokenizer files")
    return len(PARITY_PROMPTS) + len(extra_prompts)


def save_tokenizer(tokenizer: Any, out_dir: Path, max_length: int = 77,
                   extra_prompts: tuple[str, ...] | list[str] = ()) -> tuple[Path, dict[str, Any]]:
    """Write out_dir/tokenizer.json; return its path and facts for the manifest's export section."""
    standalone = standalone_tokenizer(tokenizer, max_length)
    checked = check_tokenizer_parity(standalone, tokenizer, max_length, extra_prompts)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "tokenizer.json"
    standalone.save(str(path))
    info = {"pad_token": tokenizer.pad_token, "pad_token_id": int(tokenizer.pad_token_id),
            "bos_token_id": int(tokenizer.bos_token_id), "eos_token_id": int(tokenizer.eos_token_id),
            "vocab_size": len(tokenizer), "parity_prompts_checked": checked}
    return path, info

"""`--embedding NAME=FILE`: textual-inversion embeddings baked into the bundle at export.

Files: AUTOMATIC1111 .safetensors (`emb_params`, or a flattened `string_to_param.*`), diffusers'
(`{token: tensor}`) and SDXL pairs (`clip_l` for the first text encoder, `clip_g` for the second). Like
diffusers' `load_textual_inversion`, an embedding of n vectors becomes n added tokens NAME, NAME_1, ...,
NAME_{n-1}, appended to the tokenizer(s) in that order, with the vectors as new rows of the text encoder's
token-embedding table; prompts say NAME and the runtime expands it to the n tokens (the expansion is saved
beside each tokenizer.json as prompt_expansions.json; sdrt/runtime/tokenizer.py applies it).

Why at export and not at run time: the token-embedding table is an initializer feeding the first Gather of
the text-encoder graph, folded into ONNX Runtime sessions and TensorRT engines. See docs/export.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..manifest import EXPANSIONS_FILE, sha256_file  # noqa: F401  (one name for writer and reader)
from .checkpoint_file import load_tensors, read_shapes

_PAIR = ("clip_l", "clip_g")  # SDXL: text_encoder, text_encoder_2


@dataclass(frozen=True)
class EmbeddingOption:
    name: str
    path: Path


def parse_embedding_options(values: tuple[str, ...] | list[str]) -> list[EmbeddingOption]:
    """NAME=FILE values -> options; one-line errors for a malformed value, a bad name or a repeated name."""
    options: list[EmbeddingOption] = []
    for value in values:
        name, sep, file = value.partition("=")
        name = name.strip()
        if not sep or not name or not file:
            raise UserError(f"--embedding takes NAME=FILE.safetensors, got {value!r}: e.g. --embedding "
                            "my-style=my-style.safetensors")
        if any(c.isspace() for c in name) or not name.isprintable():
            raise UserError(f"embedding name {name!r} has spaces or control characters: choose one word")
        if any(o.name == name for o in options):
            raise UserError(f"embedding name {name} is given twice: give each --embedding its own name")
        options.append(EmbeddingOption(name, Path(file)))
    return options


def _slots(path: Path) -> dict[str, str]:
    """Which tensor of the file feeds which text encoder: {"single" | "clip_l" | "clip_g": tensor name}."""
    shapes = read_shapes(path, "embedding")
    keys = list(shapes)
    a1111 = [k for k in keys if k.startswith("string_to_param")]
    if set(_PAIR) <= set(keys):
        slots = {slot: slot for slot in _PAIR}
    elif "emb_params" in keys:
        slots = {"single": "emb_params"}
    elif len(a1111) == 1:
        slots = {"single": a1111[0]}
    elif len(keys) == 1:
        slots = {"single": keys[0]}
    else:
        raise UserError(f"embedding {path.name} holds {len(keys)} tensors ({', '.join(keys[:3])}...): sdrt reads "
                        "AUTOMATIC1111 (emb_params, string_to_param), diffusers ({token: tensor}) and SDXL "
                        "(clip_l + clip_g) embeddings")
    for tensor in slots.values():
        if len(shapes[tensor]) not in (1, 2) or 0 in shapes[tensor]:
            raise UserError(f"embedding {path.name}: tensor {tensor} has shape {list(shapes[tensor])}, expected "
                            "[vectors, width]: pass a textual-inversion embedding")
    return slots


def check_embedding_files(options: list[EmbeddingOption]) -> None:
    """Before the model loads: every file readable as an embedding (pickles refused unread)."""
    for option in options:
        _slots(option.path)


def _vectors_per_encoder(option: EmbeddingOption, family: str, encoders: list[str]) -> dict[str, Any]:
    slots = _slots(option.path)
    tensors = load_tensors(option.path, "embedding", list(slots.values()))
    if family == "sdxl":
        if "single" in slots:
            raise UserError(f"embedding {option.name} ({option.path.name}) has one set of vectors, but SDXL needs "
                            "a clip_l + clip_g pair: pass an embedding made for SDXL")
        by_encoder = {enc: tensors[slots[slot]] for enc, slot in zip(encoders, _PAIR)}
    else:
        if "single" not in slots:
            raise UserError(f"embedding {option.name} ({option.path.name}) is an SDXL embedding (clip_l + clip_g) "
                            f"but the model is {family}: pass an embedding made for {family}")
        by_encoder = {encoders[0]: tensors[slots["single"]]}
    by_encoder = {enc: (t.reshape(1, -1) if t.dim() == 1 else t).float() for enc, t in by_encoder.items()}
    counts = {t.shape[0] for t in by_encoder.values()}
    if len(counts) != 1:
        raise UserError(f"embedding {option.name} ({option.path.name}) has {' and '.join(map(str, sorted(counts)))} "
                        "vectors for its two text encoders: pass an embedding with clip_l and clip_g of equal length")
    return by_encoder


def _tokens(name: str, count: int) -> list[str]:
    return [name] + [f"{name}_{i}" for i in range(1, count)]


def _check_names(name: str, tokens: list[str], tokenizer: Any) -> None:
    vocab = tokenizer.get_vocab()
    for token in tokens:
        # "cat" is not in CLIP's vocabulary but "cat</w>" is: an added "cat" would shadow the word everywhere.
        if token in vocab or f"{token}</w>" in vocab or token.lower() in vocab or f"{token.lower()}</w>" in vocab:
            what = "is" if token == name else f"needs the token {token}, which is"
            raise UserError(f"embedding name {name} {what} already a token of the model's tokenizer: choose "
                            f"another name (e.g. {name}-emb)")


def add_embeddings(source: Any, options: list[EmbeddingOption]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Add every embedding's tokens and vectors to `source` (a SourceModel); return manifest records and the
    prompt expansions (NAME -> "NAME NAME_1 ...") of the multi-vector ones. All checks run before any change."""
    pairs = [(enc, enc.replace("text_encoder", "tokenizer")) for enc in source.text_encoders]
    planned = []
    for option in options:
        vectors = _vectors_per_encoder(option, source.family, [enc for enc, _ in pairs])
        count = next(iter(vectors.values())).shape[0]
        tokens = _tokens(option.name, count)
        for enc, tok in pairs:
            _check_names(option.name, tokens, source.tokenizers[tok])
            width = int(source.text_encoders[enc].get_input_embeddings().weight.shape[1])
            if vectors[enc].shape[1] != width:
                raise UserError(f"embedding {option.name} ({option.path.name}) has vectors of width "
                                f"{vectors[enc].shape[1]}, the model's {enc} takes {width}: it was made for another "
                                "model family")
        planned.append((option, tokens, vectors))
    records, expansions = [], {}
    for option, tokens, vectors in planned:
        ids: dict[str, list[int]] = {}
        for enc, tok in pairs:
            ids[tok] = _append(source.text_encoders[enc], source.tokenizers[tok], tokens, vectors[enc])
        if len(tokens) > 1:
            expansions[option.name] = " ".join(tokens)
        records.append({"name": option.name, "file": str(option.path), "sha256": sha256_file(option.path),
                        "vectors": len(tokens), "tokens": tokens, "token_ids": ids})
    return records, expansions


def _append(encoder: Any, tokenizer: Any, tokens: list[str], vectors: Any) -> list[int]:
    """What diffusers' load_textual_inversion does: grow the table, add each token, set its row."""
    import torch

    encoder.resize_token_embeddings(len(tokenizer) + len(tokens))
    table = encoder.get_input_embeddings().weight
    ids = []
    with torch.no_grad():
        for token, vector in zip(tokens, vectors):
            tokenizer.add_tokens(token)
            token_id = tokenizer.convert_tokens_to_ids(token)
            table[token_id] = vector
            ids.append(int(token_id))
    encoder.requires_grad_(False)
    return ids

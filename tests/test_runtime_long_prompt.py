"""Prompts longer than 75 tokens: sdrt's chunked encoding against a reference built with transformers.

diffusers truncates at 77 tokens, so it cannot be the reference for the encoding itself. The reference here:
the checkpoint's transformers CLIPTokenizer gives the prompt's untruncated ids (no special tokens); they are
cut into slices of 75, each slice becomes BOS + slice + EOS + padding to 77 with the tokenizer's pad id, each
window goes through the transformers text encoder separately, and the hidden states are concatenated along
the sequence axis (SDXL: penultimate states of both encoders side by side, pooled embedding of the first
window). A shorter negative prompt is padded with windows of the empty prompt. The reference embeddings are
then fed to diffusers' pipeline (prompt_embeds=...), so the whole image is compared as well.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdrt.runtime import GenerationRequest, Pipeline

from runtime_reference import Queue, run_diffusers

LONG_PROMPT = ", ".join(f"detail number {i} of a very intricate scene" for i in range(25))
NEGATIVE = "blurry, low quality"


def reference_windows(tokenizer, prompt: str, windows: int) -> list[list[int]]:
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    out = []
    for c in range(windows):
        part = ids[c * 75:(c + 1) * 75]
        window = [tokenizer.bos_token_id, *part, tokenizer.eos_token_id]
        out.append(window + [tokenizer.pad_token_id] * (77 - len(window)))
    return out


def num_windows(tokenizer, prompt: str) -> int:
    return max(1, -(-len(tokenizer(prompt, add_special_tokens=False).input_ids) // 75))


@torch.no_grad()
def reference_sd1(folder, prompt: str, windows: int) -> torch.Tensor:
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval()
    states = [encoder(torch.tensor([w])).last_hidden_state for w in reference_windows(tokenizer, prompt, windows)]
    return torch.cat(states, dim=1)


@torch.no_grad()
def reference_sdxl(folder, prompt: str, windows: int) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    per_encoder, pooled = [], None
    for sub, cls in (("", CLIPTextModel), ("_2", CLIPTextModelWithProjection)):
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder=f"tokenizer{sub}")
        encoder = cls.from_pretrained(folder, subfolder=f"text_encoder{sub}").eval()
        outs = [encoder(torch.tensor([w]), output_hidden_states=True)
                for w in reference_windows(tokenizer, prompt, windows)]
        per_encoder.append(torch.cat([o.hidden_states[-2] for o in outs], dim=1))
        if sub:
            pooled = outs[0].text_embeds
    return torch.cat(per_encoder, dim=-1), pooled


def test_sd1_long_prompt_matches_chunked_reference(tiny_model, tiny_bundle) -> None:
    from transformers import CLIPTokenizer

    folder = tiny_model("sd1")
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    windows = num_windows(tokenizer, LONG_PROMPT)
    assert windows >= 2, "the prompt must span several windows for this test to mean anything"
    positive = reference_sd1(folder, LONG_PROMPT, windows)
    negative = reference_sd1(folder, NEGATIVE, windows)

    pipe = Pipeline.load(str(tiny_bundle("sd1")))
    cond = pipe.prompt_encoder.encode(LONG_PROMPT, NEGATIVE, 1, True, (64, 64))
    assert cond.hidden_states.shape == (2, 77 * windows, positive.shape[-1])
    embed_diff = max(float(np.abs(cond.hidden_states[0] - negative[0].numpy()).max()),
                     float(np.abs(cond.hidden_states[1] - positive[0].numpy()).max()))
    print(f"\nLONG PROMPT sd1: {windows} windows, max embedding diff {embed_diff:.2e}")
    assert embed_diff <= 1e-4

    latents = np.random.default_rng(51).standard_normal((1, 4, 8, 8), dtype=np.float32)
    ours = pipe.generate(GenerationRequest(LONG_PROMPT, negative=NEGATIVE, steps=5, sampler="ddim", cfg=7.0,
                                           latents=latents), noise=Queue())
    images, ref_latents = run_diffusers(folder, "sd1", "txt2img", "ddim", prompt=None, steps=5, latents=latents,
                                        cfg=7.0, prompt_embeds=positive, negative_prompt_embeds=negative)
    pixel = float(np.abs(np.stack(ours.images) / 255.0 - images).max())
    latent = float(np.abs(ours.latents - ref_latents).max())
    print(f"LONG PROMPT sd1 image: max pixel diff {pixel * 255:.3f}/255, max latent diff {latent:.2e}")
    assert pixel <= 2 / 255 and latent <= 1e-3


def test_sdxl_long_prompt_matches_chunked_reference(tiny_model, tiny_bundle) -> None:
    folder = tiny_model("sdxl")
    from transformers import CLIPTokenizer

    windows = num_windows(CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"), LONG_PROMPT)
    positive, pooled = reference_sdxl(folder, LONG_PROMPT, windows)
    pipe = Pipeline.load(str(tiny_bundle("sdxl")))
    cond = pipe.prompt_encoder.encode(LONG_PROMPT, None, 1, True, (64, 64))
    assert not cond.hidden_states[0].any() and not cond.text_embeds[0].any()  # force_zeros_for_empty_prompt
    embed_diff = max(float(np.abs(cond.hidden_states[1] - positive[0].numpy()).max()),
                     float(np.abs(cond.text_embeds[1] - pooled[0].numpy()).max()))
    print(f"\nLONG PROMPT sdxl: {windows} windows, max embedding diff {embed_diff:.2e}")
    assert embed_diff <= 1e-4

    latents = np.random.default_rng(52).standard_normal((1, 4, 8, 8), dtype=np.float32)
    ours = pipe.generate(GenerationRequest(LONG_PROMPT, steps=5, sampler="euler", cfg=5.0, latents=latents),
                         noise=Queue())
    images, ref_latents = run_diffusers(folder, "sdxl", "txt2img", "euler", prompt=None, steps=5, latents=latents,
                                        cfg=5.0, prompt_embeds=positive, pooled_prompt_embeds=pooled)
    pixel = float(np.abs(np.stack(ours.images) / 255.0 - images).max())
    latent = float(np.abs(ours.latents - ref_latents).max())
    print(f"LONG PROMPT sdxl image: max pixel diff {pixel * 255:.3f}/255, max latent diff {latent:.2e}")
    assert pixel <= 2 / 255 and latent <= 1e-3


@pytest.mark.parametrize("negative", ["", LONG_PROMPT + " and more"], ids=["empty", "long"])
def test_negative_and_positive_padded_to_the_same_length(tiny_model, tiny_bundle, negative: str) -> None:
    from transformers import CLIPTokenizer

    pipe = Pipeline.load(str(tiny_bundle("sd1")))
    short = pipe.prompt_encoder.encode("a cat", negative, 2, True, (64, 64))
    windows = short.hidden_states.shape[1] // 77
    assert windows == num_windows(CLIPTokenizer.from_pretrained(tiny_model("sd1"), subfolder="tokenizer"), negative)
    assert short.hidden_states.shape[0] == 4  # [neg, neg, pos, pos]
    np.testing.assert_array_equal(short.hidden_states[2], short.hidden_states[3])
    if windows > 1:  # the positive's extra windows hold the empty prompt, encoded like any window
        np.testing.assert_allclose(short.hidden_states[2, 77:154], short.hidden_states[2, 154:231], atol=1e-6)

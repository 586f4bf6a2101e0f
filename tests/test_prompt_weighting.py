"""Prompt weighting in AUTOMATIC1111's syntax: the parser against A1111's own documented examples, plain
prompts bit-identical to unweighted encoding, the "Original" emphasis formula in closed form on the text
encoders' real outputs, BREAK / long-prompt window placement, and the CLI and Python API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cli_helpers
from sdrt.backends.engine import run_engine
from sdrt.errors import UserError
from sdrt.runtime import GenerationRequest, Pipeline
from sdrt.runtime.prompt_syntax import parse_prompt_attention

SIZE = (64, 64)


# ---- the parser ------------------------------------------------------------------------------------------
# The examples of the docstring of A1111's modules/prompt_parser.py::parse_prompt_attention, verbatim.
A1111_EXAMPLES = [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1], ["hill", 0.55],
      [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]]),
]


def as_lists(segments) -> list[list]:
    return [[text, weight] for text, weight in segments]


@pytest.mark.parametrize("prompt,expected", A1111_EXAMPLES)
def test_parser_matches_a1111_documentation(prompt: str, expected: list[list]) -> None:
    assert as_lists(parse_prompt_attention(prompt)) == expected


@pytest.mark.parametrize("prompt,expected", [
    ("(word)", [["word", 1.1]]),
    ("((word))", [["word", 1.1 * 1.1]]),
    ("(word:1.4)", [["word", 1.4]]),
    ("(word:-0.5) x", [["word", -0.5], [" x", 1.0]]),
    ("[word]", [["word", 1 / 1.1]]),
    ("[[word]]", [["word", 1 / 1.1 / 1.1]]),
    ("\\(a\\) \\[b\\] c\\\\d", [["(a) [b] c\\d", 1.0]]),
    ("a) b] c: d", [["a) b] c: d", 1.0]]),  # closers without openers, and a lone colon, are text
    ("a BREAK b", [["a", 1.0], ["BREAK", None], ["b", 1.0]]),
    ("a BREAKfast", [["a BREAKfast", 1.0]]),  # only the whole word
    ("BREAK a", [["", 1.0], ["BREAK", None], ["a", 1.0]]),
    ("(a BREAK b:1.5)", [["a", 1.5], ["BREAK", None], ["b", 1.5]]),  # the break is never weighted
    ("(a:1.2.3)", [["a:1.2.3)", 1.1]]),  # not a number: text (A1111 raises), inside an unclosed "("
    ("", [["", 1.0]]),
])
def test_parser_syntax(prompt: str, expected: list[list]) -> None:
    assert as_lists(parse_prompt_attention(prompt)) == expected


# ---- encoding ------------------------------------------------------------------------------------------
def hf_ids(folder: Path, name: str, texts: list[str]) -> np.ndarray:
    """Token windows from transformers' CLIPTokenizer (one 77-token window per text, truncated)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder / name)
    return tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids


def raw_states(pipe: Pipeline, branch_index: int, ids: np.ndarray, output: str | None = None) -> np.ndarray:
    """The text encoder's own output for these windows: what the conditioning was before weighting existed."""
    branch = pipe.prompt_encoder.branches[branch_index]
    out = run_engine(branch.encoder, {"input_ids": ids.astype(np.int32)})
    return np.asarray(out[output or branch.hidden_output], dtype=np.float32)


TOKENIZERS = {"sd1": ["tokenizer"], "sdxl": ["tokenizer", "tokenizer_2"]}
PLAIN_PROMPTS = ["a red circle on a blue background", "café, 8k!! photo: a cat; 50% off", ""]


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_prompts_without_syntax_encode_bit_identically(pipelines, tiny_model, kind: str) -> None:
    pipe = pipelines(kind)
    for prompt in PLAIN_PROMPTS:
        negative = "blurry: low quality"
        cond = pipe.prompt_encoder.encode(prompt, negative, 1, True, SIZE)
        expected = []
        for b, name in enumerate(TOKENIZERS[kind]):
            ids = hf_ids(tiny_model(kind), name, [negative, prompt])  # the rows the encoder runs, in order
            expected.append(raw_states(pipe, b, ids))
        assert np.array_equal(cond.hidden_states, np.concatenate(expected, axis=-1)), prompt
        if kind == "sdxl":
            pooled = raw_states(pipe, 1, hf_ids(tiny_model(kind), "tokenizer_2", [negative, prompt]), "text_embeds")
            assert np.array_equal(cond.text_embeds, pooled)


def emphasis_reference(z: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A1111's EmphasisOriginal, written out: z * w, then times mean(z) / mean(z * w) (float64 here)."""
    z = z.astype(np.float64)
    weighted = z * weights[:, None]
    return weighted * (z.mean() / weighted.mean())


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_weighting_is_a1111_original_emphasis(pipelines, tiny_model, kind: str) -> None:
    """Closed form on the encoders' real output. The tiny SD1 encoder's final layer norm has zero bias, so its
    window means are ~1e-9 (the ratio is ill-conditioned but still the formula); SDXL's penultimate states
    are not normed, which makes it the well-conditioned case."""
    pipe = pipelines(kind)
    plain = "a red circle on a blue background"
    weighted = "a (red:1.5) circle on a [blue] background"
    cond = pipe.prompt_encoder.encode(weighted, None, 1, False, SIZE)
    unweighted = pipe.prompt_encoder.encode(plain, None, 1, False, SIZE)
    ours = cond.hidden_states[0]
    offset = 0
    for b, name in enumerate(TOKENIZERS[kind]):
        ids = hf_ids(tiny_model(kind), name, [plain])
        tokenizer = pipe.prompt_encoder.branches[b].tokenizer
        red, blue = tokenizer.token_ids("red")[0], tokenizer.token_ids("blue")[0]
        weights = np.ones(77)
        weights[ids[0] == red] = 1.5
        weights[ids[0] == blue] = 1 / 1.1
        assert (weights != 1).sum() == 2  # one token each: the test exercises exactly these two weights
        z = raw_states(pipe, b, ids)[0]
        expected = emphasis_reference(z, weights)  # each encoder restores its own mean, as in A1111
        part = ours[:, offset:offset + z.shape[1]]
        offset += z.shape[1]
        assert float(np.abs(part - expected).max()) <= 1e-6 * float(np.abs(expected).max()), name
        assert abs(part.mean(dtype=np.float64) - z.mean(dtype=np.float64)) <= 1e-6 * np.abs(z).mean(), name
        assert float(np.abs(part - z).max()) > 1e-2, name  # the weights did something
    assert offset == ours.shape[1]
    if kind == "sdxl":
        assert np.array_equal(cond.text_embeds, unweighted.text_embeds)  # the pooled embedding is never weighted


def test_negative_prompt_is_weighted_too(pipelines, tiny_model) -> None:
    pipe = pipelines("sd1")
    cond = pipe.prompt_encoder.encode("a cat", "(blurry:1.3)", 1, True, SIZE)
    ids = hf_ids(tiny_model("sd1"), "tokenizer", ["blurry", "a cat"])
    z = raw_states(pipe, 0, ids)
    weights = np.ones(77)
    weights[1] = 1.3  # "blurry" is one token
    assert float(np.abs(cond.hidden_states[0] - emphasis_reference(z[0], weights)).max()) < 1e-5 * np.abs(z).max()
    assert np.array_equal(cond.hidden_states[1], z[1])


WORDS = "red circle blue background "  # 4 tokens


def test_break_and_long_prompt_window_placement(pipelines) -> None:
    pipe = pipelines("sd1")
    branch = pipe.prompt_encoder.branches[0]
    tokenizer = branch.tokenizer
    long_text = (WORDS * 20).strip()  # 80 tokens
    prompt = f"{long_text} BREAK a (cat:1.2) BREAK dog"
    layout = branch.layout(prompt, weighting=True)
    assert [len(ids) for ids, _ in layout] == [75, 5, 2, 1]
    all_ids = tokenizer.token_ids(long_text)
    assert layout[0][0] == all_ids[:75] and layout[1][0] == all_ids[75:]
    assert layout[2] == (tokenizer.token_ids("a cat"), [1.0, 1.2])
    assert layout[3][0] == tokenizer.token_ids("dog")
    assert [len(ids) for ids, _ in branch.layout("BREAK dog", weighting=True)] == [0, 1]  # as A1111: empty window
    assert [len(ids) for ids, _ in branch.layout("dog BREAK", weighting=True)] == [1]

    # windows of a BREAK prompt are the encoder's windows of each part; the negative is padded to 2 windows
    cond = pipe.prompt_encoder.encode("a red circle BREAK on a blue background", "ugly", 1, True, SIZE)
    assert cond.hidden_states.shape[1] == 2 * 77
    windows = tokenizer.pack([tokenizer.token_ids(t) for t in ("ugly", "", "a red circle", "on a blue background")])
    z = raw_states(pipe, 0, windows)
    assert np.array_equal(cond.hidden_states.reshape(2, 2, 77, -1), z.reshape(2, 2, 77, -1))


def test_weights_apply_per_window(pipelines) -> None:
    """A1111 restores the mean per 77-token window: a weight in the second window leaves the first as it was."""
    pipe = pipelines("sd1")
    long_text = (WORDS * 19).strip()  # 76 tokens: the last "background" opens window 2
    plain = pipe.prompt_encoder.encode(f"{long_text} cat", None, 1, False, SIZE).hidden_states[0]
    weighted = pipe.prompt_encoder.encode(f"{long_text} (cat:1.4)", None, 1, False, SIZE).hidden_states[0]
    assert np.array_equal(weighted[:77], plain[:77])
    weights = np.ones(77)
    weights[2] = 1.4  # window 2: BOS, "background", "cat", EOS
    expected = emphasis_reference(plain[77:], weights)
    assert float(np.abs(weighted[77:] - expected).max()) < 1e-5 * np.abs(expected).max()


def test_literal_prompts_skip_the_syntax(pipelines, tiny_model) -> None:
    pipe = pipelines("sd1")
    prompt = "a (red:1.5) circle BREAK [x]"
    literal = pipe.prompt_encoder.encode_many([_spec(prompt, weighting=False)])[0]
    ids = hf_ids(tiny_model("sd1"), "tokenizer", [prompt])
    assert np.array_equal(literal.hidden_states[0], raw_states(pipe, 0, ids)[0])  # one window, brackets as text
    weighted = pipe.prompt_encoder.encode_many([_spec(prompt, weighting=True)])[0]
    assert weighted.hidden_states.shape[1] == 2 * 77


def _spec(prompt: str, weighting: bool):
    from sdrt.runtime.text import PromptSpec

    return PromptSpec(prompt, None, 1, False, SIZE, weighting=weighting)


def test_weights_that_cancel_the_mean_are_refused(pipelines) -> None:
    pipe = pipelines("sd1")
    with pytest.raises(UserError) as error:
        pipe.prompt_encoder.encode(f"a (cat:{'9' * 400})", None, 1, False, SIZE)  # a weight of inf
    assert str(error.value) == ("the prompt's weights cancel out its embedding (its mean becomes 0): use weights "
                                "nearer 1, e.g. (word:1.3) or (word:0.7)")


# ---- Python API and CLI --------------------------------------------------------------------------------
def png(path: Path) -> tuple[np.ndarray, str]:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")), image.info["parameters"]


def test_cli_and_api_weighted_prompts(pipelines, tiny_bundle, tmp_path: Path, capsys) -> None:
    bundle = tiny_bundle("sd1")
    pipe = pipelines("sd1")
    prompt, negative = "a (red:1.6) circle on a [blue] background", "(blurry)"
    common = dict(steps=2, sampler="ddim", seed=5)
    api = pipe.generate(GenerationRequest(prompt, negative=negative, **common)).images[0]
    plain = pipe.generate(GenerationRequest("a red circle on a blue background", negative="blurry",
                                            **common)).images[0]
    literal = pipe.generate(GenerationRequest(prompt, negative=negative, prompt_weighting=False,
                                              **common)).images[0]
    assert not np.array_equal(api, plain) and not np.array_equal(api, literal)

    args = [str(bundle), prompt, "--negative", negative, "--steps", "2", "--sampler", "ddim", "--seed", "5",
            "--no-spin"]
    code, _, err = cli_helpers.run_cli("generate", args + ["-o", str(tmp_path / "w.png")], capsys)
    assert code == 0, err
    pixels, parameters = png(tmp_path / "w.png")
    assert np.array_equal(pixels, api)
    assert parameters.split("\n")[:2] == [prompt, f"Negative prompt: {negative}"]
    assert "Emphasis" not in parameters

    code, _, err = cli_helpers.run_cli("generate", args + ["--no-prompt-weighting", "-o", str(tmp_path / "l.png")],
                                       capsys)
    assert code == 0, err
    pixels, parameters = png(tmp_path / "l.png")
    assert np.array_equal(pixels, literal)
    assert ", Emphasis: None," in parameters  # A1111's key for brackets taken literally


def test_request_flag_is_checked(pipelines) -> None:
    with pytest.raises(UserError) as error:
        pipelines("sd1").generate(GenerationRequest("a cat", prompt_weighting="no"))
    assert str(error.value) == "GenerationRequest prompt_weighting must be True or False, got str 'no'"

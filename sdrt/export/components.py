"""What each exported graph is: its torch wrapper, its IO contract (names, dtypes, named dynamic dims) and
the inputs used to trace and to check it.

The IO names and layouts here are the runtime's contract (docs/manifest.md); change them only together.
Dims: `batch`; `height`/`width` are latent cells; `image_height`/`image_width` are pixels (8x latent);
`sequence` is the text length seen by the UNet (77 per prompt chunk, a multiple of 77).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import UserError
from ..manifest import clip_skip_output
from .controlnets import residual_dims, residual_layout, residual_torch_shape
from .loading import SourceModel

TEXT_LENGTH = 77
# Clip skips (A1111 numbering) the text encoders get an output for, beyond the default 1. Each is a tensor the
# graph computes anyway (plus one layer norm on SD 1/2), so the default path only pays for copying it out.
MAX_CLIP_SKIP = 4


@dataclass(frozen=True)
class ShapeCase:
    """One concrete input geometry: latent size, batch, text length."""

    batch: int
    height: int  # latent cells
    width: int
    sequence: int = TEXT_LENGTH

    def describe(self) -> str:
        return f"b{self.batch} {self.height}x{self.width} seq{self.sequence}"


@dataclass
class IOSpec:
    name: str
    dtype: str  # numpy dtype name
    dims: list[int | str]


@dataclass
class ComponentGraph:
    name: str
    module: Any  # torch.nn.Module whose forward takes the inputs in order and returns the outputs in order
    inputs: list[IOSpec]
    outputs: list[IOSpec]
    make_inputs: Callable[[ShapeCase, Any], tuple]  # (shape, torch.Generator) -> tuple of tensors
    is_vae: bool = False

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str)} for t in self.inputs + self.outputs}


def _torch_modules():
    import torch

    class TextEncoderGraph(torch.nn.Module):
        """CLIP text encoder returning the final (layer-normed) states, the penultimate layer's states
        (SDXL conditioning), the conditioning at each extra clip skip (`clip_skips`: SD 1/2 the final layer
        norm of hidden_states[-N], SDXL hidden_states[-(N+1)], as diffusers' `clip_skip` = N - 1) and, for
        the projection model, the pooled projected embedding."""

        def __init__(self, encoder: Any, with_projection: bool, clip_skips: list[int], sdxl: bool):
            super().__init__()
            self.encoder = encoder
            self.with_projection = with_projection
            self.clip_skips = clip_skips
            self.sdxl = sdxl
            text_model = getattr(encoder, "text_model", encoder)  # transformers < 5 nests the layers there
            self.final_layer_norm = text_model.final_layer_norm

        def forward(self, input_ids):
            out = self.encoder(input_ids.long(), output_hidden_states=True, return_dict=True)
            if self.sdxl:
                skipped = [out.hidden_states[-(n + 1)] for n in self.clip_skips]
            else:
                skipped = [self.final_layer_norm(out.hidden_states[-n]) for n in self.clip_skips]
            pooled = [out.text_embeds] if self.with_projection else []
            return (out.last_hidden_state, out.hidden_states[-2], *pooled, *skipped)

    class UNetGraph(torch.nn.Module):
        """The U-Net; with `residuals` > 0 (ControlNet bundles) its last inputs are the ControlNet residuals
        (down blocks..., mid block), added inside the U-Net as diffusers does."""

        def __init__(self, unet: Any, sdxl: bool, residuals: int = 0):
            super().__init__()
            self.unet = unet
            self.sdxl = sdxl
            self.residuals = residuals

        def forward(self, sample, timestep, encoder_hidden_states, *rest):
            text_embeds, time_ids = rest[:2] if self.sdxl else (None, None)
            residuals = rest[2:] if self.sdxl else rest
            added = {"text_embeds": text_embeds, "time_ids": time_ids} if self.sdxl else None
            extra = {}
            if self.residuals:
                extra = {"down_block_additional_residuals": tuple(residuals[:-1]),
                         "mid_block_additional_residual": residuals[-1]}
            return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False,
                             **extra)[0]

    class VaeDecoderGraph(torch.nn.Module):
        def __init__(self, vae: Any):
            super().__init__()
            self.vae = vae

        def forward(self, latent):
            return self.vae.decode(latent, return_dict=False)[0]

    class VaeEncoderGraph(torch.nn.Module):
        """Returns the posterior's mean and std, so the runtime can sample (or take the mean) without torch."""

        def __init__(self, vae: Any):
            super().__init__()
            self.vae = vae

        def forward(self, image):
            posterior = self.vae.encode(image, return_dict=False)[0]
            return posterior.mean, posterior.std

    return TextEncoderGraph, UNetGraph, VaeDecoderGraph, VaeEncoderGraph


def _controlnet_module(net: Any, sdxl: bool) -> Any:
    """A ControlNet returning its residuals unscaled (conditioning_scale 1; the runtime applies the scale)."""
    import torch

    class ControlNetGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, text_embeds=None, time_ids=None):
            added = {"text_embeds": text_embeds, "time_ids": time_ids} if sdxl else None
            down, mid = self.net(sample, timestep, encoder_hidden_states, controlnet_cond, added_cond_kwargs=added,
                                 return_dict=False)
            return (*down, mid)

    return ControlNetGraph()


def _randn(gen: Any, *shape: int):
    import torch

    return torch.randn(*shape, generator=gen, dtype=torch.float32)


def _token_ids(gen: Any, batch: int, vocab_size: int):
    """Plausible prompts: BOS, random word ids, EOS, then EOS padding, with varying prompt lengths."""
    import torch

    ids = torch.full((batch, TEXT_LENGTH), vocab_size - 1, dtype=torch.int32)
    ids[:, 0] = vocab_size - 2
    for row in range(batch):
        length = int(torch.randint(1, TEXT_LENGTH - 1, (1,), generator=gen))
        ids[row, 1 : 1 + length] = torch.randint(0, vocab_size - 2, (length,), generator=gen, dtype=torch.int32)
    return ids


def clip_skips(num_layers: int, sdxl: bool) -> list[int]:
    """The clip skips beyond 1 that get an output: up to MAX_CLIP_SKIP, and only while the chosen state is a
    transformer layer's output (not the token embeddings)."""
    deepest = num_layers - 1 if sdxl else num_layers
    return list(range(2, min(MAX_CLIP_SKIP, deepest) + 1))


def build_component_graphs(source: SourceModel, names: list[str] | None = None) -> list[ComponentGraph]:
    """The graphs to export for `source`, in export order, optionally restricted to `names`."""
    import torch

    TextEncoderGraph, UNetGraph, VaeDecoderGraph, VaeEncoderGraph = _torch_modules()
    graphs: list[ComponentGraph] = []
    for name, encoder in source.text_encoders.items():
        cfg = encoder.config
        with_projection = hasattr(encoder, "text_projection")
        outputs = [IOSpec("last_hidden_state", "float32", ["batch", TEXT_LENGTH, cfg.hidden_size]),
                   IOSpec("penultimate_hidden_state", "float32", ["batch", TEXT_LENGTH, cfg.hidden_size])]
        if with_projection:
            outputs.append(IOSpec("text_embeds", "float32", ["batch", cfg.projection_dim]))
        skips = clip_skips(cfg.num_hidden_layers, source.is_sdxl)
        outputs += [IOSpec(clip_skip_output(n), "float32", ["batch", TEXT_LENGTH, cfg.hidden_size]) for n in skips]
        vocab = cfg.vocab_size
        graphs.append(ComponentGraph(
            name=name, module=TextEncoderGraph(encoder, with_projection, skips, source.is_sdxl),
            inputs=[IOSpec("input_ids", "int32", ["batch", TEXT_LENGTH])], outputs=outputs,
            make_inputs=lambda s, g, vocab=vocab: (_token_ids(g, s.batch, vocab),),
        ))

    ucfg = source.unet.config
    in_ch, ctx_dim = ucfg.in_channels, ucfg.cross_attention_dim
    unet_inputs = [IOSpec("sample", "float32", ["batch", in_ch, "height", "width"]),
                   IOSpec("timestep", "float32", ["batch"]),
                   IOSpec("encoder_hidden_states", "float32", ["batch", "sequence", ctx_dim])]
    pooled_dim = n_time_ids = 0
    if source.is_sdxl:
        # SDXL base conditions on 6 time ids (size, crop, target size); the refiner on 5 (aesthetic score).
        pooled_dim = source.text_encoders["text_encoder_2"].config.projection_dim
        n_time_ids = (ucfg.projection_class_embeddings_input_dim - pooled_dim) // ucfg.addition_time_embed_dim
        unet_inputs += [IOSpec("text_embeds", "float32", ["batch", pooled_dim]),
                        IOSpec("time_ids", "float32", ["batch", n_time_ids])]

    def unet_inputs_for(s: ShapeCase, g: Any) -> tuple:
        feeds = [_randn(g, s.batch, in_ch, s.height, s.width),
                 torch.rand(s.batch, generator=g) * 999.0,
                 _randn(g, s.batch, s.sequence, ctx_dim)]
        if source.is_sdxl:
            h, w = 8 * s.height, 8 * s.width
            ids = [h, w, 0.0, 0.0, h, w] if n_time_ids == 6 else [h, w, 0.0, 0.0, 6.0][:n_time_ids]
            feeds += [_randn(g, s.batch, pooled_dim),
                      torch.tensor([ids], dtype=torch.float32).repeat(s.batch, 1)]
        return tuple(feeds)

    layout = residual_layout(ucfg) if source.controlnets else []
    residual_specs = [IOSpec(name, "float32", residual_dims(ch, f)) for name, ch, f in layout]

    def residuals_for(s: ShapeCase, g: Any) -> tuple:
        return tuple(_randn(g, *residual_torch_shape(s.batch, ch, f, s.height, s.width)) * 0.3 for _, ch, f in layout)

    graphs.append(ComponentGraph(
        name="unet", module=UNetGraph(source.unet, source.is_sdxl, len(layout)), inputs=unet_inputs + residual_specs,
        outputs=[IOSpec("out_sample", "float32", ["batch", ucfg.out_channels, "height", "width"])],
        make_inputs=lambda s, g: unet_inputs_for(s, g) + residuals_for(s, g),
    ))

    zc = source.vae.config.latent_channels
    graphs.append(ComponentGraph(
        name="vae_decoder", module=VaeDecoderGraph(source.vae),
        inputs=[IOSpec("latent", "float32", ["batch", zc, "height", "width"])],
        outputs=[IOSpec("image", "float32", ["batch", 3, "image_height", "image_width"])],
        make_inputs=lambda s, g: (_randn(g, s.batch, zc, s.height, s.width),), is_vae=True,
    ))
    graphs.append(ComponentGraph(
        name="vae_encoder", module=VaeEncoderGraph(source.vae),
        inputs=[IOSpec("image", "float32", ["batch", 3, "image_height", "image_width"])],
        outputs=[IOSpec("latent_mean", "float32", ["batch", zc, "height", "width"]),
                 IOSpec("latent_std", "float32", ["batch", zc, "height", "width"])],
        make_inputs=lambda s, g: ((torch.rand(s.batch, 3, 8 * s.height, 8 * s.width, generator=g) * 2 - 1),),
        is_vae=True,
    ))
    if names is not None:
        unknown = sorted(set(names) - {g.name for g in graphs})
        if unknown:
            have = ", ".join(g.name for g in graphs)
            raise UserError(f"component(s) {', '.join(unknown)} not in this model: choose from {have}")
        graphs = [g for g in graphs if g.name in names]
    for control in source.controlnets:
        cond_channels = int(control.config.get("conditioning_channels", 3))
        control_in = int(control.config.get("in_channels", 4))
        latent = [IOSpec("sample", "float32", ["batch", control_in, "height", "width"])]
        sdxl_inputs = unet_inputs[3:]

        def control_inputs_for(s: ShapeCase, g: Any, c: int = cond_channels, c_in: int = control_in) -> tuple:
            feeds = unet_inputs_for(s, g)
            image = torch.rand(s.batch, c, 8 * s.height, 8 * s.width, generator=g)
            return (feeds[0][:, :c_in], *feeds[1:3], image, *feeds[3:])

        graphs.append(ComponentGraph(
            name=control.component, module=_controlnet_module(control.module, source.is_sdxl),
            inputs=[*latent, *unet_inputs[1:3],
                    IOSpec("controlnet_cond", "float32", ["batch", cond_channels, "image_height", "image_width"]),
                    *sdxl_inputs],
            outputs=residual_specs, make_inputs=control_inputs_for,
        ))
    return graphs


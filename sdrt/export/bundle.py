"""`sdrt export` end to end: checkpoint -> traced, cleaned, (fp16-converted), gated graphs + tokenizers +
scheduler config + manifest, built in a hidden temporary folder beside OUT and renamed into place only when
everything passed. Any failure, Ctrl-C or SIGTERM removes the temporary folder: OUT is either complete or
absent (or the previous bundle, with --overwrite). What OUT may be is checked before anything loads
(output_folder.py).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from ..user_files import require_regular_file
from ..manifest import (MANIFEST_NAME, ComponentSpec, ControlNetInfo, Manifest, ModelInfo, TensorSpec, sha256_file,
                        write_atomic)
from .checkpoint_file import refuse_pickle
from .cleanup import CLEANUP_METHODS, cleanup_graph
from .controlnets import check_controlnet_folders, load_controlnets
from .components import TEXT_LENGTH, ComponentGraph, build_component_graphs
from .fusion import cpu_fusions
from . import fusion_choice
from .gate import THRESHOLDS, check_graph, torch_references
from .embeddings import EXPANSIONS_FILE, EmbeddingOption, add_embeddings, check_embedding_files
from .loading import SourceModel, load_source_model
from .lora_fusion import LoraOption, check_lora_files, fuse_loras, lora_modules
from .onnx_files import save_model
from .param_map import parameter_map
from .output_folder import check_output_folder, check_replaceable
from .precision import to_mixed_fp16
from .shapes import default_latent_size, gate_cases, trace_case
from .single_file import PREDICTION_TYPES
from .size_range import SizeRange, check_size_options, size_range
from .staging import OWNER_FILE, create_staging, release_staging, remove_stale_partials
from .termination import Terminated, sigterm_raises
from .tokenizer_export import save_tokenizer
from .tracing import MIN_OPSET, trace_to_onnx
from .vae_swap import swap_vae, vae_layout

Progress = Callable[[str], None]


@dataclass
class ExportOptions:
    precisions: tuple[str, ...] = ("fp32", "fp16")
    opset: int = 17
    components: list[str] | None = None  # None: every component the model has
    fp32_vae: bool | None = None  # keep the VAE fp32 in the fp16 set; None: when the VAE asks (force_upcast)
    cleanup: str = "onnxslim"
    fuse: bool | None = None  # attention -> MultiHeadAttention in the fp32 graphs (ONNX Runtime CPU; fusion.py):
    # True always, False never, None when it is faster on this model (both timed: fusion_choice.py)
    fusion_timer: fusion_choice.Timer | None = None  # None: fusion_choice.time_both (tests hand in fixed timings)
    config: Path | None = None  # diffusers config folder for single-file checkpoints
    overwrite: bool = False  # replace OUT when it is an sdrt bundle (never any other folder)
    min_size: int | None = None  # image side range in pixels; None: derived from the UNet's sample size
    max_size: int | None = None
    prediction_type: str | None = None  # override the checkpoint's (SD 2.x v-models look like epsilon ones)
    vae: Path | None = None  # a VAE .safetensors (LDM or diffusers layout) replacing the checkpoint's
    embeddings: list[EmbeddingOption] = field(default_factory=list)  # textual inversions baked in
    loras: list[LoraOption] = field(default_factory=list)  # adapters fused into the weights before tracing
    controlnets: list[Path] = field(default_factory=list)  # diffusers ControlNetModel folders (docs/controlnet.md)
    thresholds: dict[str, dict[str, float]] = field(default_factory=lambda: {k: dict(v) for k, v in THRESHOLDS.items()})


def export_bundle(model: str | os.PathLike, out: str | os.PathLike, options: ExportOptions | None = None,
                  progress: Progress | None = None) -> Manifest:
    """Export `model` to the bundle directory `out`; return its manifest."""
    options = options or ExportOptions()
    say = progress or (lambda message: None)
    _check_options(options)
    inputs = {"the model": model, "the --config folder": options.config, "the --vae file": options.vae}
    inputs.update({f"the embedding {e.name}": e.path for e in options.embeddings})
    inputs.update({f"the LoRA {o.path.name}": o.path for o in options.loras})
    inputs.update({f"the ControlNet {Path(p).name}": p for p in options.controlnets})
    check_output_folder(out, options.overwrite, inputs)
    adapters = _check_input_files(model, options)
    controlnets = check_controlnet_folders([Path(p) for p in options.controlnets])
    out = Path(out).absolute()
    remove_stale_partials(out, say)
    with sigterm_raises() as guard:
        staging = create_staging(out)
        try:
            say(f"loading {model}")
            source = load_source_model(model, options.config, options.prediction_type, options.vae is not None, say)
            _customise(source, options, adapters, say)
            if controlnets:
                load_controlnets(controlnets, source.unet.config, source.family, say)
                source.controlnets = controlnets
            manifest = _build(source, staging, options, say)
            release_staging(staging)
            with guard.deferred():
                _move_into_place(staging, out)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, Terminated):
                say(f"stopped by SIGTERM: removed the unfinished {staging}")
            if disk_full(exc):
                raise UserError(f"the disk holding {out} is full (No space left on device): the unfinished "
                                f"{staging.name} was removed; free space or choose an OUT folder on another disk "
                                "(a bundle needs about twice the checkpoint's size per precision)") from None
            raise
    say(f"bundle written to {out}")
    return manifest


def disk_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT anywhere in the exception's chain: onnx and torch wrap the OSError of a failed write."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if os.strerror(errno.ENOSPC) in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _check_options(options: ExportOptions) -> None:
    bad = [p for p in options.precisions if p not in ("fp32", "fp16")]
    if bad or not options.precisions:
        raise UserError(f"unknown precision {', '.join(bad) or '(none)'}: choose fp32, fp16 or both")
    if options.opset < MIN_OPSET:
        raise UserError(f"opset {options.opset} is too old: use --opset {MIN_OPSET} or newer")
    if options.cleanup not in CLEANUP_METHODS:
        raise UserError(f"unknown cleanup {options.cleanup!r}: choose one of {', '.join(CLEANUP_METHODS)}")
    check_size_options(options.min_size, options.max_size)
    if options.prediction_type is not None and options.prediction_type not in PREDICTION_TYPES:
        raise UserError(f"unknown prediction type {options.prediction_type!r}: choose {' or '.join(PREDICTION_TYPES)}")


def _check_input_files(model: str | os.PathLike, options: ExportOptions) -> list:
    """Pickles refused, --vae, --embedding and --lora files readable and of the right kind, before the (slow)
    model load and before anything is written. Returns the adapters read."""
    if not Path(model).is_dir():
        refuse_pickle(Path(model), "checkpoint")  # by name, before anything opens it (a FIFO included)
        if os.path.lexists(model):
            require_regular_file(model, "model path", "pass a diffusers folder or a .safetensors file")
    if options.vae is not None:
        vae_layout(Path(options.vae))
    check_embedding_files(options.embeddings)
    return check_lora_files(options.loras)


def _customise(source: SourceModel, options: ExportOptions, adapters: list, say: Progress) -> None:
    """--vae, --embedding and --lora, applied to the loaded modules before anything is traced."""
    if options.vae is not None:
        source.replaced_vae = swap_vae(source.vae, Path(options.vae), source.family)
        say(f"VAE replaced by {Path(options.vae).name} ({source.replaced_vae['layout']} layout)")
    if options.embeddings:
        source.embeddings, source.prompt_expansions = add_embeddings(source, options.embeddings)
        for record in source.embeddings:
            say(f"embedding {record['name']}: {record['vectors']} vector(s), tokens {' '.join(record['tokens'])}")
    if options.loras:
        source.loras = fuse_loras(source, options.loras, adapters, say)


def _move_into_place(staging: Path, out: Path) -> None:
    if not (out.exists() or out.is_symlink()):
        os.replace(staging, out)
        return
    check_replaceable(out)  # again: OUT may have changed during the export
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / "bundle")
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old / "bundle", out)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _build(source: SourceModel, root: Path, options: ExportOptions, say: Progress) -> Manifest:
    started = time.time()
    graphs = build_component_graphs(source, options.components)
    fp32_vae = bool(getattr(source.vae.config, "force_upcast", False)) if options.fp32_vae is None else options.fp32_vae
    sizes = _size_range(source, options, say)
    traced_at = trace_case(source)
    checked_at = gate_cases(source)
    components: dict[str, dict[str, ComponentSpec]] = {p: {} for p in options.precisions}
    graph_stats: dict[str, Any] = {}
    param_maps: dict[str, dict[str, Any]] = {p: {} for p in options.precisions}
    for index, graph in enumerate(graphs, 1):
        tag = f"[{index}/{len(graphs)}] {graph.name}"
        specs, stats = _export_component(graph, source, root, options, fp32_vae and graph.is_vae, tag, say)
        for precision, spec in specs.items():
            components[precision][graph.name] = spec
        for precision, mapping in stats.pop("parameter_map", {}).items():
            param_maps[precision][graph.name] = mapping
        graph_stats[graph.name] = stats
    shutil.rmtree(root / ".scratch", ignore_errors=True)

    tokenizers, tokenizer_info = {}, {}
    names_in_use = [f"a photo of {e} in the style of {e}, {x}" for e, x in source.prompt_expansions.items()]
    names_in_use += [f"{r['name']}, a portrait" for r in source.embeddings]
    for name, tokenizer in source.tokenizers.items():
        path, info = save_tokenizer(tokenizer, root / name, TEXT_LENGTH, extra_prompts=names_in_use)
        if source.prompt_expansions:
            write_atomic(path.parent / EXPANSIONS_FILE, json.dumps(source.prompt_expansions, indent=2).encode())
        tokenizers[name] = path.relative_to(root).as_posix()
        tokenizer_info[name] = info
        say(f"{name}: tokenizer.json written, ids equal transformers' on {info['parity_prompts_checked']} prompts")
    write_atomic(root / "scheduler.json", json.dumps(source.scheduler_config, indent=2).encode())

    manifest = Manifest(
        model=_model_info(source, sizes),
        components=components,
        tokenizers=tokenizers,
        scheduler="scheduler.json",
        files={},
        export={
            "opset": options.opset, "precisions": list(options.precisions), "cleanup": options.cleanup,
            "fuse": fusion_choice.MODES[options.fuse],
            "fp32_vae_in_fp16": fp32_vae, "io_dtypes": "float32 inputs and outputs at every precision "
            "(fp16 graphs cast at their edges); input_ids int32",
            "size_range": sizes.source, "trace_shape": traced_at.describe(),
            "gate_shapes": [c.describe() for c in checked_at],
            "thresholds": options.thresholds, "graphs": graph_stats, "parameter_map": param_maps, "tokenizers": tokenizer_info,
            **_customisations(source),
            "tools": _tool_versions(), "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.time() - started, 2),
        },
        controlnets={c.name: ControlNetInfo(**c.record(source.family)) for c in source.controlnets},
    )
    manifest.files = {p.relative_to(root).as_posix(): sha256_file(p)
                      for p in sorted(root.rglob("*")) if p.is_file() and p.name not in (MANIFEST_NAME, OWNER_FILE)}
    manifest.save(root)
    _readable_by_all(root)
    return manifest


def _customisations(source: SourceModel) -> dict[str, Any]:
    """Manifest records of what changed the checkpoint's weights or told how it was read (absent if none)."""
    records: dict[str, Any] = {}
    if source.origin:
        records["source"] = source.origin
    if source.replaced_vae:
        records["vae"] = source.replaced_vae
    if source.loras:
        records["loras"] = source.loras
    if source.embeddings:
        records["embeddings"] = source.embeddings
        records["prompt_expansions"] = source.prompt_expansions
    return records


def _readable_by_all(root: Path) -> None:
    """mkdtemp / mkstemp create owner-only entries; a bundle is shared data, so give it the umask's modes."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _export_component(graph: ComponentGraph, source: SourceModel, root: Path, options: ExportOptions,
                      keep_fp32: bool, tag: str, say: Progress) -> tuple[dict[str, ComponentSpec], dict[str, Any]]:
    t0 = time.time()
    scratch = root / ".scratch" / graph.name
    say(f"{tag}: tracing at {trace_case(source).describe()} (opset {options.opset})")
    traced = trace_to_onnx(graph, trace_case(source), scratch, options.opset)
    stats: dict[str, Any] = {"traced_nodes": len(traced.graph.node)}
    model32 = cleanup_graph(traced, options.cleanup)
    del traced
    shutil.rmtree(scratch, ignore_errors=True)
    stats["nodes"] = len(model32.graph.node)
    torch_module = lora_modules(source).get(graph.name)
    maps = stats["parameter_map"] = {}
    say(f"{tag}: {options.cleanup} cleanup {stats['traced_nodes']} -> {stats['nodes']} nodes")

    say(f"{tag}: torch reference at {', '.join(c.describe() for c in gate_cases(source))}")
    refs = torch_references(graph, gate_cases(source))
    specs: dict[str, ComponentSpec] = {}

    fp32_spec = None
    if "fp32" in options.precisions:
        fp32_spec, stats["fusion_choice"] = _save_fp32(model32, graph, refs, root, options, tag, say)
        specs["fp32"] = fp32_spec
        if torch_module is not None:
            maps["fp32"] = parameter_map(model32, torch_module)
    if "fp16" in options.precisions and keep_fp32:
        # The fp16 set keeps this VAE in fp32 and GPU backends (TensorRT) run it: it must stay standard ONNX.
        if fp32_spec is not None and not fp32_spec.fusions:
            specs["fp16"] = fp32_spec
        else:
            specs["fp16"] = _save_gated(model32, root / "fp16" / f"{graph.name}.onnx", graph, refs, root, options,
                                        tag, say, "fp32", {})
    if "fp16" in options.precisions and not keep_fp32:
        say(f"{tag}: converting to mixed fp16")
        model16 = to_mixed_fp16(model32)
        del model32  # the fp32 proto is saved already; free it before the fp16 gate (GBs at full size)
        stats["fp16_nodes"] = len(model16.graph.node)
        if torch_module is not None:
            maps["fp16"] = parameter_map(model16, torch_module)
        path16 = root / "fp16" / f"{graph.name}.onnx"
        external = save_model(model16, path16)
        del model16
        accuracy = _gate(path16, graph, refs, "fp16", options, tag, say)
        specs["fp16"] = _spec(graph, path16, root, external, accuracy, "fp16-mixed")
    stats["seconds"] = round(time.time() - t0, 2)
    return specs, stats


def _save_fp32(model32: Any, graph: ComponentGraph, refs: list, root: Path, options: ExportOptions, tag: str,
               say: Progress) -> tuple[ComponentSpec, dict[str, Any]]:
    """The fp32 graph, fused or not per --fuse / --no-fuse, or (neither) whichever of the two runs faster:
    both saved in scratch, timed, the faster moved into place and gated, the other deleted. The manifest
    record of the choice is returned beside the spec."""
    path = root / "fp32" / f"{graph.name}.onnx"
    scratch = root / ".scratch" / f"{graph.name}-fusion"
    try:
        with cpu_fusions(model32, options.fuse is not False) as fusions:
            if fusions and options.fuse:
                say(f"{tag}: fused for ONNX Runtime CPU (--fuse): {_describe(fusions)}")
            elif fusions:
                say(f"{tag}: {_describe(fusions)} possible: timing the fused and the unfused graph")
            if not fusions or options.fuse:
                spec = _save_gated(model32, path, graph, refs, root, options, tag, say, "fp32", fusions)
                return spec, fusion_choice.record(options.fuse, bool(fusions))
            saved = {"fused": (scratch / "fused" / path.name, save_model(model32, scratch / "fused" / path.name))}
        saved["unfused"] = (scratch / "unfused" / path.name, save_model(model32, scratch / "unfused" / path.name))
        timer = options.fusion_timer or fusion_choice.time_both
        fused_s, unfused_s = timer(saved["fused"][0], saved["unfused"][0], refs[0].feeds)
        keep = fusion_choice.choose(fused_s, unfused_s)
        say(f"{tag}: {fusion_choice.describe(fused_s, unfused_s, keep)}")
        kept, external = saved["fused" if keep else "unfused"]
        path.parent.mkdir(parents=True, exist_ok=True)
        for name in (path.name, external):  # the graph and its external data file, named after it
            if name:
                os.replace(kept.parent / name, path.parent / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    accuracy = _gate(path, graph, refs, "fp32", options, tag, say)
    spec = _spec(graph, path, root, external, accuracy, "fp32")
    spec = dataclasses.replace(spec, fusions=dict(fusions) if keep else {})
    return spec, fusion_choice.record(options.fuse, keep, fused_s, unfused_s)


def _describe(fusions: dict[str, int]) -> str:
    return ", ".join(f"{count} {op}" for op, count in fusions.items())


def _save_gated(model: Any, path: Path, graph: ComponentGraph, refs: list, root: Path, options: ExportOptions,
                tag: str, say: Progress, precision: str, fusions: dict[str, int]) -> ComponentSpec:
    external = save_model(model, path)
    accuracy = _gate(path, graph, refs, precision, options, tag, say)
    return dataclasses.replace(_spec(graph, path, root, external, accuracy, precision), fusions=dict(fusions))


def _gate(path: Path, graph: ComponentGraph, refs: list, precision: str, options: ExportOptions, tag: str,
          say: Progress) -> dict[str, Any]:
    record = check_graph(path, graph, refs, precision, options.thresholds)
    worst = record["worst"]
    say(f"{tag}: {precision} gate passed (rel {worst['rel']:.2e}, max_abs {worst['max_abs']:.2e}, "
        f"cosine {worst['cosine']:.6f})")
    return record


def _spec(graph: ComponentGraph, path: Path, root: Path, external: str | None, accuracy: dict[str, Any],
          compute: str) -> ComponentSpec:
    rel = path.relative_to(root)
    return ComponentSpec(
        file=rel.as_posix(),
        inputs=[TensorSpec(t.name, t.dtype, list(t.dims)) for t in graph.inputs],
        outputs=[TensorSpec(t.name, t.dtype, list(t.dims)) for t in graph.outputs],
        external_data=(rel.parent / external).as_posix() if external else None,
        accuracy=accuracy,
        compute_precision=compute,
    )


def _vae_scale(source: SourceModel) -> int:
    return 2 ** (len(source.vae.config.block_out_channels) - 1)


def _size_range(source: SourceModel, options: ExportOptions, say: Progress) -> SizeRange:
    downsamplings = len(source.unet.config.block_out_channels) - 1
    return size_range(_vae_scale(source), default_latent_size(source), downsamplings, options.min_size,
                      options.max_size, say)


def _model_info(source: SourceModel, sizes: SizeRange) -> ModelInfo:
    vae_cfg = source.vae.config
    scale = _vae_scale(source)
    shift = getattr(vae_cfg, "shift_factor", None)
    return ModelInfo(
        family=source.family,
        prediction_type=source.prediction_type,
        latent_channels=int(vae_cfg.latent_channels),
        unet_in_channels=int(source.unet.config.in_channels),
        vae_scale_factor=scale,
        vae_scaling_factor=float(vae_cfg.scaling_factor),
        vae_shift_factor=float(shift) if shift is not None else None,
        default_size=[sizes.default_size, sizes.default_size],
        min_size=sizes.min_size,
        max_size=sizes.max_size,
        text_max_length=TEXT_LENGTH,
        text_embed_dims=[int(e.config.hidden_size) for e in source.text_encoders.values()],
        force_zeros_for_empty_prompt=bool(source.pipeline_config.get("force_zeros_for_empty_prompt", False)),
        requires_aesthetics_score=bool(source.pipeline_config.get("requires_aesthetics_score", False)),
        source=str(source.path),
        size_multiple=scale,
    )


def _tool_versions() -> dict[str, str]:
    import diffusers
    import onnx
    import onnxruntime
    import torch
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
                "transformers": transformers.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__}
    try:
        import onnxslim

        versions["onnxslim"] = onnxslim.__version__
    except ImportError:
        pass
    from .. import __version__

    versions["sdrt"] = __version__
    return versions

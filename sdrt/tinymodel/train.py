"""Train the built-in model from scratch on CPU, deterministically: `python -m sdrt.tinymodel.train OUT`.

Stages (each resumable from OUT/, so a killed run continues where it stopped):
1. render the shapes dataset (seeded);
2. train the VAE alone on 32x32 crops (it is fully convolutional; crops cost a quarter of full images and
   flat-coloured scenes hold nothing a crop misses), then set its scaling factor to 1 / std of the latents
   as SD did;
3. encode every image once and cache the latent mean / std;
4. train the UNet and the text encoder jointly on the cached latents with the epsilon objective, dropping
   10% of captions to "" so classifier-free guidance works, keeping an exponential moving average;
5. write a diffusers folder (OUT/model) with the averaged weights, and OUT/train_metrics.json.

Determinism: fixed seeds for data, initialisation and every random draw, fixed thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .shapes import make_dataset


@dataclass
class TrainSettings:
    seed: int = 0
    images: int = 40000
    threads: int = 2
    vae_steps: int = 1200
    vae_batch: int = 32
    vae_crop: int = 32
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-5  # on the per-element KL; small: reconstruction first, latents stay bounded
    unet_steps: int = 4000
    unet_batch: int = 128
    unet_lr: float = 8e-4
    warmup_steps: int = 100
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    log_every: int = 50


QUICK = dict(images=512, vae_steps=20, unet_steps=30, checkpoint_every=10, log_every=5, unet_batch=32)


def _log(out: Path, message: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} [cpu {time.process_time():.0f}s] {message}"
    print(line, flush=True)
    with open(out / "train.log", "a") as f:
        f.write(line + "\n")


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _to_tensor(images_uint8: np.ndarray):
    import torch

    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def train_vae(images: np.ndarray, s: TrainSettings, out: Path):
    import torch

    from .architecture import new_vae

    done = out / "vae_trained.pt"
    torch.manual_seed(s.seed + 1)
    vae = new_vae()
    if done.exists():
        vae.load_state_dict(torch.load(done))
        return vae, json.loads((out / "vae_metrics.json").read_text())
    gen = torch.Generator().manual_seed(s.seed + 2)
    opt = torch.optim.Adam(vae.parameters(), lr=s.vae_lr)
    started, running = time.time(), []
    n, size = len(images), images.shape[1]
    for step in range(s.vae_steps):
        for group in opt.param_groups:
            group["lr"] = s.vae_lr * _lr_factor(step, s.vae_steps, s.warmup_steps)
        idx = torch.randint(n, (s.vae_batch,), generator=gen).numpy()
        oy, ox = torch.randint(size - s.vae_crop + 1, (2,), generator=gen).tolist()
        x = _to_tensor(images[idx, oy:oy + s.vae_crop, ox:ox + s.vae_crop])
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        mse = torch.mean((recon - x) ** 2)
        kl = posterior.kl().mean() / z[0].numel()
        loss = mse + s.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append((mse.item(), kl.item()))
        if (step + 1) % s.log_every == 0:
            m = np.mean(running, axis=0)
            _log(out, f"vae step {step + 1}/{s.vae_steps} mse {m[0]:.5f} kl {m[1]:.3f} "
                      f"({time.time() - started:.0f}s)")
            running = []
    vae.eval()
    with torch.no_grad():  # full-size reconstruction on held-out scenes
        held_out, _, _ = make_dataset(64, s.seed + 1000)
        x = _to_tensor(held_out)
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        recon_mse = float(torch.mean((recon - x) ** 2))
    metrics = {"vae_seconds": time.time() - started, "vae_recon_mse_full_size": recon_mse}
    torch.save(vae.state_dict(), done)
    (out / "vae_metrics.json").write_text(json.dumps(metrics))
    _log(out, f"vae done: held-out full-size mse {recon_mse:.5f} (pixels in [-1, 1])")
    return vae, metrics


def encode_latents(vae, images: np.ndarray, out: Path, batch: int = 256):
    """(mean, std) of the posterior for every image, cached in OUT/latents.pt."""
    import torch

    cache = out / "latents.pt"
    if cache.exists():
        return torch.load(cache)
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            dist = vae.encode(_to_tensor(images[i:i + batch])).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    result = (torch.cat(means), torch.cat(stds))
    torch.save(result, cache)
    return result


def tokenize(captions: list[str]):
    import torch

    from ..export.clip_vocab import build_clip_tokenizer, locate_clip_bpe

    tokenizer = build_clip_tokenizer(bpe_path=locate_clip_bpe(required=True))
    ids = tokenizer(captions + [""], padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt").input_ids
    return tokenizer, ids[:-1], ids[-1]


def train_denoiser(latents, scaling_factor: float, caption_ids, empty_ids, s: TrainSettings, out: Path):
    """Joint UNet + text encoder training; returns the EMA models and loss history."""
    import copy

    import torch

    from .architecture import new_scheduler, new_text_encoder, new_unet

    torch.manual_seed(s.seed + 3)
    text_encoder, unet = new_text_encoder(), new_unet()
    ema_te, ema_unet = copy.deepcopy(text_encoder), copy.deepcopy(unet)
    params = list(text_encoder.parameters()) + list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=s.unet_lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(s.seed + 4)
    history: list[list[float]] = []
    start, elapsed_before = 0, 0.0
    ckpt = out / "denoiser_checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        text_encoder.load_state_dict(state["te"])
        unet.load_state_dict(state["unet"])
        ema_te.load_state_dict(state["ema_te"])
        ema_unet.load_state_dict(state["ema_unet"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        start, history, elapsed_before = state["step"], state["history"], state["seconds"]
        _log(out, f"resuming denoiser at step {start}")
    alphas = new_scheduler().alphas_cumprod.float()
    mean, std = latents
    n = len(mean)
    text_encoder.train()
    unet.train()
    started, running = time.time(), []
    for step in range(start, s.unet_steps):
        for group in opt.param_groups:
            group["lr"] = s.unet_lr * _lr_factor(step, s.unet_steps, s.warmup_steps)
        idx = torch.randint(n, (s.unet_batch,), generator=gen)
        z = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scaling_factor
        ids = caption_ids[idx].clone()
        drop = torch.rand(s.unet_batch, generator=gen) < s.caption_dropout
        ids[drop] = empty_ids
        t = torch.randint(len(alphas), (s.unet_batch,), generator=gen)
        noise = torch.randn(z.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * z + (1 - a).sqrt() * noise
        hidden = text_encoder(ids).last_hidden_state
        pred = unet(noisy, t, hidden).sample
        loss = torch.mean((pred - noise) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(s.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_te, text_encoder), (ema_unet, unet)):
                for pe, pl in zip(ema.parameters(), live.parameters()):
                    pe.lerp_(pl, 1 - decay)
        running.append(loss.item())
        if (step + 1) % s.log_every == 0:
            seconds = elapsed_before + time.time() - started
            history.append([step + 1, float(np.mean(running)), seconds])
            _log(out, f"denoiser step {step + 1}/{s.unet_steps} loss {np.mean(running):.4f} "
                      f"lr {opt.param_groups[0]['lr']:.2e} ({seconds:.0f}s)")
            running = []
        if (step + 1) % s.checkpoint_every == 0 or step + 1 == s.unet_steps:
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"te": text_encoder.state_dict(), "unet": unet.state_dict(), "ema_te": ema_te.state_dict(),
                        "ema_unet": ema_unet.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                        "step": step + 1, "history": history,
                        "seconds": elapsed_before + time.time() - started}, tmp)
            tmp.replace(ckpt)
    seconds = elapsed_before + time.time() - started
    return ema_te.eval(), ema_unet.eval(), history, seconds


def save_diffusers_folder(text_encoder, unet, vae, tokenizer, out: Path, folder_name: str = "model") -> Path:
    import diffusers

    from .architecture import new_scheduler

    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                             scheduler=new_scheduler(), safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    folder = out / folder_name
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def finalize_checkpoint(out: Path, folder_name: str = "model_checkpoint") -> Path:
    """A diffusers folder from the latest denoiser checkpoint's averaged weights, while training goes on
    (for looking at progress, or to ship when the run must stop early)."""
    import torch

    from .architecture import new_text_encoder, new_unet, new_vae

    state = torch.load(out / "denoiser_checkpoint.pt", weights_only=False)
    text_encoder, unet, vae = new_text_encoder(), new_unet(), new_vae()
    text_encoder.load_state_dict(state["ema_te"])
    unet.load_state_dict(state["ema_unet"])
    vae.load_state_dict(torch.load(out / "vae_trained.pt"))
    mean, _ = torch.load(out / "latents.pt")
    vae.register_to_config(scaling_factor=float(1.0 / mean.std()))
    from ..export.clip_vocab import build_clip_tokenizer, locate_clip_bpe

    tokenizer = build_clip_tokenizer(bpe_path=locate_clip_bpe(required=True))
    folder = save_diffusers_folder(text_encoder.eval(), unet.eval(), vae.eval(), tokenizer, out, folder_name)
    (folder / "checkpoint_step.json").write_text(json.dumps({"step": state["step"], "seconds": state["seconds"]}))
    return folder


def train(out: Path, settings: TrainSettings) -> dict[str, Any]:
    import torch

    torch.set_num_threads(settings.threads)
    torch.use_deterministic_algorithms(True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(asdict(settings), indent=1))
    t0 = time.time()
    images, _, captions = make_dataset(settings.images, settings.seed)
    _log(out, f"rendered {len(images)} images in {time.time() - t0:.1f}s")

    vae, vae_metrics = train_vae(images, settings, out)
    t1 = time.time()
    latents = encode_latents(vae, images, out)
    scaling_factor = float(1.0 / latents[0].std())
    vae.register_to_config(scaling_factor=scaling_factor)
    _log(out, f"latents encoded in {time.time() - t1:.0f}s; scaling factor {scaling_factor:.4f}")

    tokenizer, caption_ids, empty_ids = tokenize(captions)
    text_encoder, unet, history, unet_seconds = train_denoiser(latents, scaling_factor, caption_ids, empty_ids,
                                                               settings, out)
    folder = save_diffusers_folder(text_encoder, unet, vae, tokenizer, out)
    metrics = {"settings": asdict(settings), **vae_metrics, "process_cpu_seconds": time.process_time(),
               "wall_seconds": time.time() - t0, "scaling_factor": scaling_factor,
               "denoiser_seconds": unet_seconds, "loss_history": history,
               "final_loss": history[-1][1] if history else None, "torch": torch.__version__}
    (out / "train_metrics.json").write_text(json.dumps(metrics, indent=1))
    _log(out, f"model written to {folder}")
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="working folder (checkpoints, log, model/)")
    parser.add_argument("--quick", action="store_true", help="a minutes-long smoke run with tiny step counts")
    parser.add_argument("--finalize-checkpoint", action="store_true",
                        help="only write OUT/model_checkpoint from the latest checkpoint (training may go on)")
    for name, value in asdict(TrainSettings()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=None)
    args = parser.parse_args(argv)
    if args.finalize_checkpoint:
        print(finalize_checkpoint(args.out))
        return
    overrides = QUICK if args.quick else {}
    settings = TrainSettings(**{**overrides, **{k: v for k, v in vars(args).items()
                                                if k in TrainSettings.__dataclass_fields__ and v is not None}})
    train(args.out, settings)


if __name__ == "__main__":
    main()

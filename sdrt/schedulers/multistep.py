"""Multistep solvers in VP space with diffusers' semantics: DPM++ 2M, DPM++ 2M SDE and UniPC (bh2).

They reproduce DPMSolverMultistepScheduler (dpmsolver++ / sde-dpmsolver++, order 2, midpoint,
lower_order_final, final sigma 0) and UniPCMultistepScheduler (bh2, order 2, predict_x0, corrector on).

Why a step is one matrix product: every update of these solvers is a *linear* combination of a few arrays
(the latents, the model output, earlier data predictions, injected noise) whose weights depend only on the
schedule. So the weights of every step are worked out once, before sampling, by writing the solver's formulas
on *coefficient vectors* (`_Forms`), which reads exactly like the formulas on arrays. The arrays live as rows
of a float32 buffer, and a step is one BLAS call, `weights @ rows`, plus one copy of the model output into
its row. That keeps a step at a fraction of diffusers' cost; nothing is allocated while sampling, and the
buffers and weights are reused by the next run with the same layout and schedule.

ModelCall.x is a view into that buffer: valid until the next `send`, never to be written by the caller.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache, partial

import numpy as np

from .noise_schedule import NoiseSchedule
from .sampling import ModelCall, NoiseSource, SamplerLoop, SamplerSpec, StepEnd, register
from .schedules import (
    Schedule,
    ays_sigmas,
    exponential_sigmas,
    karras_sigmas,
    sigma_to_t,
    spaced_timesteps,
)

# --------------------------------------------------------------------------------------------------------------
# Schedule: where the solver stops
# --------------------------------------------------------------------------------------------------------------


def _last_timestep(noise_schedule: NoiseSchedule, lambda_min_clipped: float) -> int:
    """diffusers' `lambda_min_clipped`: drop the training timesteps whose log-SNR is below the clip (the cosine
    schedule's last few, where log-SNR dives to -inf). The default -inf keeps all of them."""
    ac = noise_schedule.alphas_cumprod
    lambdas = np.log(np.sqrt(ac)) - np.log(np.sqrt(1 - ac))  # float32, as diffusers computes lambda_t
    clipped = int(np.searchsorted(lambdas[::-1], lambda_min_clipped))
    return noise_schedule.num_train_timesteps - clipped


def multistep_schedule(noise_schedule: NoiseSchedule, steps: int, schedule: str, spacing: str,
                       model_family: str = "sd1", *, lambda_min_clipped: float = -math.inf,
                       round_cosine_karras: bool = True) -> Schedule:
    """The points DPMSolverMultistep / UniPCMultistep visit, with their conventions:

    - normal: N+1 spaced timesteps with the last dropped (trailing: N), sigmas interpolated at them;
    - karras / exponential / ays: sigmas over the full training range; the network is told
      `sigma_to_t(sigma)` rounded (exponential: truncated, as diffusers' int64 cast does), while the update
      uses the exact sigma;
    - the final sigma is 0 (final_sigmas_type="zero").

    `round_cosine_karras=False` is DPMSolverMultistep's quirk of not rounding Karras timesteps for the cosine
    schedule (the int64 cast then truncates them).
    """
    T = noise_schedule.num_train_timesteps
    train_sigmas = noise_schedule.sigmas  # ascending in t, float32 like diffusers
    if schedule == "normal":
        last = _last_timestep(noise_schedule, lambda_min_clipped)
        if spacing == "trailing":
            timesteps = spaced_timesteps("trailing", steps, T, last_timestep=last)
        else:
            points = spaced_timesteps(spacing, steps + 1, T, noise_schedule.steps_offset, last_timestep=last)
            timesteps = points.round()[:-1]
        sigmas = np.interp(timesteps, np.arange(T), train_sigmas)
    else:
        sigma_min, sigma_max = float(train_sigmas[0]), float(train_sigmas[-1])
        if schedule == "karras":
            sigmas = karras_sigmas(sigma_min, sigma_max, steps)
        elif schedule == "exponential":
            sigmas = exponential_sigmas(sigma_min, sigma_max, steps)
        elif schedule == "ays":
            sigmas = ays_sigmas(model_family, steps + 1)[:-1]
        else:
            raise ValueError(f"unknown schedule {schedule!r}: use normal, karras, exponential or ays")
        t = sigma_to_t(sigmas, train_sigmas)
        truncate = schedule == "exponential" or (
            schedule == "karras" and not round_cosine_karras and noise_schedule.beta_schedule == "squaredcos_cap_v2")
        timesteps = np.trunc(t) if truncate else t.round()
    sigmas = np.append(sigmas, 0.0).astype(np.float32)
    return Schedule(timesteps=timesteps.astype(np.float64), sigmas=sigmas)


def _vp(sigma: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """(alpha_t, sigma_t) of the VP process at VE noise level sigma: alpha = 1/sqrt(sigma^2+1)."""
    alpha = 1.0 / np.sqrt(np.square(sigma) + 1.0)
    return alpha, sigma * alpha


def init_noise_sigma(schedule: Schedule, noise_schedule: NoiseSchedule, spacing: str) -> float:
    return 1.0  # VP samplers start from unit-variance noise


def add_noise(x0: np.ndarray, noise: np.ndarray, schedule: Schedule, noise_schedule: NoiseSchedule,
              step: int) -> np.ndarray:
    """x0 noised to the level of `step` in VP form: alpha_t * x0 + sigma_t * noise."""
    alpha, sigma = _vp(np.float64(schedule.sigmas[step]))
    return (np.float32(alpha) * x0 + np.float32(sigma) * noise).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------------------------
# Step weights, written as the solvers' formulas on coefficient vectors
# --------------------------------------------------------------------------------------------------------------


class _Forms:
    """Linear forms over named rows, for a batch of steps at once.

    `forms.x` is the unit form of row "x" (shape (rows, 1)); multiplying it by a per-step scalar array of
    shape (steps,) gives a (rows, steps) form, and + - * / compose forms just as they would compose arrays.
    """

    def __init__(self, rows: tuple[str, ...]) -> None:
        self.rows = rows
        for i, name in enumerate(rows):
            unit = np.zeros((len(rows), 1))
            unit[i] = 1.0
            setattr(self, name, unit)

    def weights(self, outputs: list[np.ndarray], steps: int) -> np.ndarray:
        """float32 weights of shape (steps, outputs, rows): row j of the next buffer = weights[i, j] @ rows."""
        full = [np.broadcast_to(form, (len(self.rows), steps)) for form in outputs]
        return np.ascontiguousarray(np.stack(full).transpose(2, 0, 1), dtype=np.float32)


# The arrays each solver keeps as rows: carried state first (x, the latents, is always row 0), then the inputs
# that arrive with a step. m1, m2: data predictions of the last steps; xc: UniPC's corrected sample.
DPMPP_2M_ROWS = ("x", "m1", "out")
DPMPP_2M_SDE_ROWS = ("x", "m1", "out", "noise")
UNIPC_ROWS = ("x", "m1", "m2", "xc", "out")


def _data_prediction(f: _Forms, alpha: np.ndarray, sigma: np.ndarray, prediction_type: str) -> np.ndarray:
    """The x0 estimate from the network output row, per step (DPM-Solver++ and UniPC work on x0)."""
    if prediction_type == "epsilon":
        return (f.x - sigma * f.out) / alpha
    if prediction_type == "v_prediction":
        return alpha * f.x - sigma * f.out
    if prediction_type == "sample":
        return f.out
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


@dataclass(frozen=True)
class _Levels:
    """VP quantities at every schedule point (float64): alpha_t, sigma_t and log-SNR lambda (+inf at sigma 0)."""

    alpha: np.ndarray
    sigma: np.ndarray
    lam: np.ndarray

    @classmethod
    def of(cls, sigmas: np.ndarray) -> "_Levels":
        alpha, sigma = _vp(sigmas.astype(np.float64))
        with np.errstate(divide="ignore"):
            lam = np.log(alpha) - np.log(sigma)
        return cls(alpha, sigma, lam)

    @property
    def num_steps(self) -> int:
        return len(self.alpha) - 1


def _first_order_flags(steps: np.ndarray, start_step: int, num_steps: int) -> np.ndarray:
    """Steps that fall back to first order: the first one (no history yet) and the last one (diffusers'
    lower_order_final / final_sigmas_type="zero")."""
    return (steps == start_step) | (steps == num_steps - 1)


def _safe(values: np.ndarray, use: np.ndarray) -> np.ndarray:
    """`values` where used, 1 elsewhere: second-order terms are computed for every step and discarded where a
    step is first order, and must not produce inf/nan there (inf * 0 in a form would poison the weights)."""
    return np.where(use, values, 1.0)


def _dpmpp_2m_weights(lv: _Levels, prediction_type: str, start_step: int, sde: bool) -> np.ndarray:
    """DPM-Solver++(2M), midpoint; with `sde` the SDE variant (sde-dpmsolver++) with its noise row."""
    f = _Forms(DPMPP_2M_SDE_ROWS if sde else DPMPP_2M_ROWS)
    n = lv.num_steps
    i = np.arange(start_step, n)
    second = ~_first_order_flags(i, start_step, n)
    prev = np.maximum(i - 1, 0)
    alpha_t, sigma_t, lambda_t = lv.alpha[i + 1], lv.sigma[i + 1], lv.lam[i + 1]
    alpha_s0, sigma_s0, lambda_s0 = lv.alpha[i], lv.sigma[i], lv.lam[i]
    lambda_s1 = lv.lam[prev]

    m0 = _data_prediction(f, alpha_s0, sigma_s0, prediction_type)
    h = lambda_t - lambda_s0  # +inf on the final step to sigma 0, where exp(-h) = 0 and x_t = m0
    r0 = _safe((lambda_s0 - lambda_s1) / h, second)
    D0, D1 = m0, (1.0 / r0) * (m0 - f.m1)
    D = np.where(second, D0 + 0.5 * D1, D0)
    if sde:
        x_t = (sigma_t / sigma_s0 * np.exp(-h)) * f.x + (alpha_t * (1 - np.exp(-2.0 * h))) * D \
            + (sigma_t * np.sqrt(1.0 - np.exp(-2.0 * h))) * f.noise
    else:
        x_t = (sigma_t / sigma_s0) * f.x - (alpha_t * (np.exp(-h) - 1.0)) * D
    return f.weights([x_t, m0], len(i))


def _bh2_b(hh: np.ndarray, order: int) -> list[np.ndarray]:
    """UniPC's right-hand side b_k = h_phi_k * k! / B(h) for k = 1..order, with B(h) = expm1(hh) (bh2)."""
    h_phi_1 = np.expm1(hh)
    h_phi_k, factorial, b = h_phi_1 / hh - 1.0, 1, []
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / h_phi_1)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return b


def _unipc_weights(lv: _Levels, prediction_type: str, start_step: int) -> np.ndarray:
    """UniPC bh2, order 2, predict_x0: at each step the UniC corrector refines the previous step's result with
    the fresh model output, then the UniP predictor steps on from the corrected sample.

    Rows: x (latents the network saw), m1/m2 (x0 estimates of the last two steps), xc (the previous step's
    corrected sample, diffusers' `last_sample`: the corrector starts from it, not from x), out.
    """
    f = _Forms(UNIPC_ROWS)
    n = lv.num_steps
    i = np.arange(start_step, n)
    # Predictor order: 1 on the first step and the last (lower_order_final), else 2.
    order = np.where(_first_order_flags(i, start_step, n), 1, 2)
    corrector_order = np.concatenate([[1], order[:-1]])  # the corrector at i runs at the predictor order of i-1
    corrected = i > start_step
    p1, p2 = np.maximum(i - 1, 0), np.maximum(i - 2, 0)

    m_i = _data_prediction(f, lv.alpha[i], lv.sigma[i], prediction_type)

    # UniC: from xc = x_{i-1} (corrected) and m1 = m_{i-1} to sigma_i, using the new m_i.
    alpha_t, sigma_t, sigma_s0 = lv.alpha[i], lv.sigma[i], _safe(lv.sigma[p1], corrected)
    h = _safe(lv.lam[i] - lv.lam[p1], corrected)
    hh = -h
    h_phi_1 = B_h = np.expm1(hh)
    second = corrected & (corrector_order == 2)
    rk = _safe((lv.lam[p2] - lv.lam[p1]) / h, second)
    D1 = (f.m2 - f.m1) / rk
    b1, b2 = _bh2_b(hh, 2)
    # rhos_c = solve([[1, 1], [rk, 1]], [b1, b2]) for order 2; 0.5 for order 1.
    rho_d1 = np.where(second, (b1 - b2) / _safe(1.0 - rk, second), 0.0)
    rho_t = np.where(second, b1 - rho_d1, 0.5)
    x_t_ = sigma_t / sigma_s0 * f.xc - alpha_t * h_phi_1 * f.m1
    xc = x_t_ - alpha_t * B_h * (rho_d1 * D1 + rho_t * (m_i - f.m1))
    xc = np.where(corrected, xc, f.x)

    # UniP: from xc and m_i (and m_{i-1}) to sigma_{i+1}.
    alpha_t, sigma_t, sigma_s0 = lv.alpha[i + 1], lv.sigma[i + 1], lv.sigma[i]
    h = lv.lam[i + 1] - lv.lam[i]  # +inf on the last step: expm1(-inf) = -1, so x_t = m_i
    hh = -h
    h_phi_1 = B_h = np.expm1(hh)
    second = order == 2
    rk = _safe((lv.lam[p1] - lv.lam[i]) / h, second)
    D1 = (f.m1 - m_i) / rk
    rho_p = np.where(second, 0.5, 0.0)  # diffusers' simplified order-2 predictor; no D1 term at order 1
    x_t_ = sigma_t / sigma_s0 * xc - alpha_t * h_phi_1 * m_i
    x_t = x_t_ - alpha_t * B_h * rho_p * D1
    return f.weights([x_t, m_i, f.m1, xc], len(i))


# --------------------------------------------------------------------------------------------------------------
# The loop: one matrix product per step
# --------------------------------------------------------------------------------------------------------------

# Columns per BLAS call. The product is tiny and memory-bound, so BLAS threads only add synchronisation, and on a
# busy machine they stall badly (measured: 3.3 ms instead of 0.22 ms for one UniPC step at 2x4x128x128).
# OpenBLAS runs a gemm on one thread when m*n*k <= 65536 * 4, so each call stays below that.
_SINGLE_THREAD_GEMM = 65536 * 4


@lru_cache(maxsize=64)
def _step_weights(solver: str, sigmas: bytes, prediction_type: str, start_step: int) -> np.ndarray:
    """Weights of every step from `start_step`, cached: they depend only on the schedule, so a server that
    samples the same settings again reuses them (diffusers recomputes its coefficients in every step)."""
    levels = _Levels.of(np.frombuffer(sigmas, dtype=np.float32))
    if solver == "unipc":
        weights = _unipc_weights(levels, prediction_type, start_step)
    else:
        weights = _dpmpp_2m_weights(levels, prediction_type, start_step, sde=solver == "dpmpp_2m_sde")
    weights.setflags(write=False)
    return weights


class _RowBuffer:
    """One float32 buffer holding a solver's rows, with the views a step needs made once."""

    def __init__(self, rows: tuple[str, ...], carried: int, shape: tuple[int, ...]) -> None:
        size = int(np.prod(shape))
        self.data = np.empty((len(rows), size), np.float32)
        self.x = self.data[0].reshape(shape)
        self.out = self.data[rows.index("out")].reshape(shape)
        self.noise = self.data[rows.index("noise")].reshape(shape) if "noise" in rows else None
        self.history = self.data[1:carried]
        chunk = max(1, _SINGLE_THREAD_GEMM // (carried * len(rows)) // 1024) * 1024  # 4 KiB-aligned blocks
        starts = range(0, size, chunk)
        self.inputs = [self.data[:, s:s + chunk] for s in starts]  # column blocks read by a step
        self.outputs = [self.data[:carried, s:s + chunk] for s in starts]  # column blocks a step writes


class _BufferPool:
    """Row buffers kept from one run to the next. Fresh memory page-faults on first write, and for a run of
    20 steps at 2x4x64x64 those faults cost more than all the arithmetic; reused buffers cost nothing.
    Holds at most two buffers for each of the `max_layouts` most recent (rows, shape) layouts."""

    def __init__(self, max_layouts: int = 4) -> None:
        self._free: OrderedDict[tuple, list[_RowBuffer]] = OrderedDict()
        self._lock = threading.Lock()
        self._max_layouts = max_layouts

    def take(self, rows: tuple[str, ...], carried: int, shape: tuple[int, ...]) -> _RowBuffer:
        key = (rows, carried, shape)
        with self._lock:
            free = self._free.get(key)
            if free:
                return free.pop()
        return _RowBuffer(rows, carried, shape)

    def give(self, buffer: _RowBuffer, rows: tuple[str, ...], carried: int, shape: tuple[int, ...]) -> None:
        key = (rows, carried, shape)
        with self._lock:
            free = self._free.setdefault(key, [])
            self._free.move_to_end(key)
            if len(free) < 2:
                free.append(buffer)
            while len(self._free) > self._max_layouts:
                self._free.popitem(last=False)


_POOL = _BufferPool()


def _run_rows(x: np.ndarray, schedule: Schedule, weights: np.ndarray, rows: tuple[str, ...],
              noise: NoiseSource | None, start_step: int, end_step: StepEnd) -> SamplerLoop:
    """Drive a solver whose step k maps the rows of one buffer to the carried rows of the other by
    `weights[k]`; the model output (and noise) are copied into their rows when they arrive. Two buffers are
    used in turn because BLAS must not write the rows it reads."""
    shape = tuple(x.shape)
    carried = weights.shape[1]
    buffers = (_POOL.take(rows, carried, shape), _POOL.take(rows, carried, shape))
    try:
        # The first step reads the history rows with weight 0: they must hold zeros, not leftovers
        # (0 * nan = nan). Every other row is written before it is read.
        buffers[0].history.fill(0.0)
        np.copyto(buffers[0].x, x, casting="same_kind")
        steps = range(start_step, schedule.num_steps)
        timesteps = schedule.timesteps[start_step:].tolist()
        alpha_bars = (1.0 / (1.0 + np.square(schedule.sigmas[start_step:-1].astype(np.float64)))).tolist()
        for k, step in enumerate(steps):
            current, following = buffers[k % 2], buffers[1 - k % 2]
            output = yield ModelCall(current.x, timesteps[k], alpha_bars[k], step)
            np.copyto(current.out, output, casting="same_kind")
            if noise is not None:
                np.copyto(current.noise, noise(shape), casting="same_kind")
            w = weights[k]
            for block, result in zip(current.inputs, following.outputs):
                np.matmul(w, block, out=result)
            returned = end_step(step, following.x)
            if returned is not following.x:
                np.copyto(following.x, returned, casting="same_kind")
        return buffers[len(steps) % 2].x.copy()
    finally:  # also when the caller abandons the loop
        for buffer in buffers:
            _POOL.give(buffer, rows, carried, shape)


def _run_dpmpp_2m(x: np.ndarray, schedule: Schedule, noise_schedule: NoiseSchedule, noise: NoiseSource, *,
                  start_step: int, end_step: StepEnd, options: dict, sde: bool = False) -> SamplerLoop:
    solver, rows = ("dpmpp_2m_sde", DPMPP_2M_SDE_ROWS) if sde else ("dpmpp_2m", DPMPP_2M_ROWS)
    weights = _step_weights(solver, schedule.sigmas.astype(np.float32).tobytes(), noise_schedule.prediction_type,
                            start_step)
    return (yield from _run_rows(x, schedule, weights, rows, noise if sde else None, start_step, end_step))


def _run_unipc(x: np.ndarray, schedule: Schedule, noise_schedule: NoiseSchedule, noise: NoiseSource, *,
               start_step: int, end_step: StepEnd, options: dict) -> SamplerLoop:
    weights = _step_weights("unipc", schedule.sigmas.astype(np.float32).tobytes(), noise_schedule.prediction_type,
                            start_step)
    return (yield from _run_rows(x, schedule, weights, UNIPC_ROWS, None, start_step, end_step))


register(SamplerSpec(
    name="dpmpp_2m", title="DPM++ 2M", stochastic=False, default_spacing="linspace",
    build_schedule=partial(multistep_schedule, round_cosine_karras=False), run=_run_dpmpp_2m,
    init_noise_sigma=init_noise_sigma, add_noise=add_noise,
    diffusers_counterpart="DPMSolverMultistepScheduler(algorithm_type='dpmsolver++')",
))
register(SamplerSpec(
    name="dpmpp_2m_sde", title="DPM++ 2M SDE", stochastic=True, default_spacing="linspace",
    build_schedule=partial(multistep_schedule, round_cosine_karras=False),
    run=partial(_run_dpmpp_2m, sde=True), init_noise_sigma=init_noise_sigma, add_noise=add_noise,
    diffusers_counterpart="DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++')",
))
register(SamplerSpec(
    name="unipc", title="UniPC", stochastic=False, default_spacing="linspace",
    build_schedule=multistep_schedule, run=_run_unipc, init_noise_sigma=init_noise_sigma, add_noise=add_noise,
    diffusers_counterpart="UniPCMultistepScheduler(solver_type='bh2')",
))

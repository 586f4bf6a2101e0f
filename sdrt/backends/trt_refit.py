"""LoRA adapters on native TensorRT engines: refit the engine's weights in place, no rebuild.

An engine built with `sdrt build --refittable` (BuilderFlag.REFIT) keeps its weights replaceable. The ONNX
parser names each weight after its ONNX initializer, so the values sdrt computes for initializers
(sdrt/lora/placement.py) are given to `trt.Refitter.set_named_weights(name, trt.Weights(array))` as they are
(same dtype as the initializer: the network is strongly typed). `get_missing_weights()` names weights
TensorRT needs together with the ones set (weights it combined when building); they are given their current
values. `refit_cuda_engine()` then updates the engine.

One engine holds one weight set at a time: `RefitSwitch` remembers which, and `RefitView` (the engine as one
adapter set sees it) brings the engine to its set before each run, under the engine's lock; a plain run of
the engine (the base pipeline) brings it back to the base weights. Restoring = refitting the changed weights
with the bundle's own values. CUDA graphs captured with the old weights are dropped after each refit, and
a set is captured again only on its second consecutive run (trt_engine.py: capture on second use). A failed
refit marks the engine dirty, so the next apply refits every weight it may have changed.

Written to NVIDIA's documented Python API and exercised against the stand-in in tests/fake_trt.py (which
rejects unknown names and refuses to refit while weights are missing, as TensorRT does). NOT RUN ON A GPU.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from ..errors import UserError

BaseValues = Callable[[list[str]], dict[str, np.ndarray]]
DIRTY = ("<dirty: a refit failed part-way>",)  # RefitSwitch.current after a failed refit: equals no set's key


class PartialRefit(UserError):
    """refit_cuda_engine() returned False: "a subset of weights may have been refitted"."""


def not_refittable(name: str) -> UserError:
    return UserError(f"the TensorRT {name} engine was built without --refittable, so LoRA adapters cannot be "
                     "switched into it: rebuild the engines with `sdrt build BUNDLE --refittable` (or use an "
                     "ONNX Runtime backend)")


def refit(trt: Any, engine: Any, logger: Any, name: str, weights: Mapping[str, np.ndarray],
          base: BaseValues) -> None:
    """Set `weights` (initializer name -> array) in a refittable engine; missing partners get base values."""
    refitter = trt.Refitter(engine, logger)
    held: list[np.ndarray] = []  # trt.Weights points at these: they must live until refit_cuda_engine returns

    def put(weight: str, value: np.ndarray) -> None:
        array = np.ascontiguousarray(value)
        held.append(array)
        if not refitter.set_named_weights(weight, trt.Weights(array)):
            raise UserError(f"the TensorRT {name} engine has no refittable weight {weight} of shape "
                            f"{list(array.shape)} ({array.dtype}): it was built from another export of this model; "
                            "rebuild it with `sdrt build BUNDLE --refittable`")

    for weight, value in weights.items():
        put(weight, value)
    missing = [w for w in refitter.get_missing_weights() if w not in weights]
    if missing:
        for weight, value in base(missing).items():
            put(weight, value)
    still = list(refitter.get_missing_weights())
    if still:
        raise UserError(f"TensorRT cannot refit the {name} engine: it needs weights the bundle does not name "
                        f"({', '.join(still[:3])}): rebuild it with `sdrt build BUNDLE --refittable`")
    if not refitter.refit_cuda_engine():
        raise PartialRefit(f"TensorRT failed to refit the {name} engine (see its log above): rebuild it with "
                        "`sdrt build BUNDLE --refittable`")


class RefitSwitch:
    """Which weight set one refittable TrtEngine holds, and the refit that changes it. Use under engine.lock."""

    def __init__(self, engine: Any, base: BaseValues) -> None:
        if not getattr(engine.engine, "refittable", False):
            raise not_refittable(engine.name)
        self.engine, self.base = engine, base
        self.current: tuple = ()  # the key of the set in the engine; () = the base weights
        self.changed: frozenset[str] = frozenset()
        self.refits = 0

    def apply(self, key: tuple, values: Mapping[str, np.ndarray]) -> None:
        """Bring the engine to the set `key`. A refit that fails part-way ("if false is returned, a subset
        of weights may have been refitted") leaves the engine dirty: no set is current, and every weight
        it may have touched is refit on the next apply, whatever set that asks for."""
        if key == self.current:
            return
        restore = sorted(self.changed - set(values))
        weights = {**(self.base(restore) if restore else {}), **values}
        trt = self.engine._trt_module
        try:
            refit(trt, self.engine.engine, trt.Logger(trt.Logger.WARNING), self.engine.name, weights, self.base)
        except PartialRefit:  # names were all accepted: any of them may now hold the new value
            self.current, self.changed = DIRTY, self.changed | frozenset(weights)
            self.engine.weights_changed()
            raise
        self.engine.weights_changed()  # graphs captured with the old weights are invalid
        self.current, self.changed = key, frozenset(values)
        self.refits += 1


def switch_for(engine: Any, base: BaseValues) -> RefitSwitch:
    """The engine's switch, made once; from then on the engine's own runs restore the base weights."""
    with engine.lock:
        if getattr(engine, "switch", None) is None:
            engine.switch = RefitSwitch(engine, base)
        return engine.switch


class RefitView:
    """The engine as one adapter set sees it: the same engine, refit to this set before each run."""

    def __init__(self, engine: Any, switch: RefitSwitch, key: tuple, values: Mapping[str, np.ndarray]) -> None:
        self._engine, self._switch, self.key, self.values = engine, switch, key, dict(values)
        self.name, self.inputs, self.outputs, self.lock = engine.name, engine.inputs, engine.outputs, engine.lock

    @property
    def providers(self) -> list[str]:
        return self._engine.providers

    @property
    def max_batch(self) -> int:
        return self._engine.max_batch

    @property
    def min_batch(self) -> int:
        return self._engine.min_batch

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            self._switch.apply(self.key, self.values)
            return self._engine._run_locked(feeds)

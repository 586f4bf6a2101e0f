"""One process-wide lock for ONNX Runtime's CUDA work: session creation and runs.

Why: ONNX Runtime captures its CUDA graphs with cudaStreamCaptureModeGlobal ("for now cuda graph can only
work with a single thread", onnxruntime cuda_graph.cc). In that mode a potentially unsafe CUDA call from ANY
thread during a capture - cudaMalloc when another thread creates a session, e.g. a LoRA adapter set prepared
on an HTTP worker thread - invalidates the capture. Holding this lock around every session creation and
every run on a GPU provider makes a capture and such calls mutually exclusive. The CUDA EP also keeps its
graphs per thread, so sdrt warms up on the thread that serves (BatchingEngine's loop thread), not on the
thread that constructs (the Ray replica's constructor).

Re-entrant: an engine's run may create nothing, but a session created inside a locked section (a LoRA set
built while preparing a request) must not deadlock. CPU engines never take it. NOT RUN ON A GPU.
"""

from __future__ import annotations

import contextlib
import threading
from typing import ContextManager

GPU_LOCK = threading.RLock()


def gpu_lock_for(device: str) -> ContextManager[object]:
    """GPU_LOCK for a GPU device ("cuda"), a no-op context for "cpu"."""
    return GPU_LOCK if device != "cpu" else contextlib.nullcontext()

"""Sticky CUDA errors: after one, the process's CUDA context is corrupt and every later CUDA call fails with it
(CUDA's runtime API docs: "the process must be terminated and relaunched"). A server that kept running would
fail every job while /readyz said ready, so the serving loop stops on the first one (sdrt.serving.batcher) and
`sdrt serve` exits with EXIT_CODE for the orchestrator to restart it.

Recognized by the error's text, which carries CUDA's error name whichever library raised it: sdrt's own
cuda_rt ("cudaStreamSynchronize failed: cudaErrorIllegalAddress"), ONNX Runtime's CUDA provider ("CUDA error
cudaErrorIllegalAddress: an illegal memory access was encountered") or TensorRT's log. NOT RUN ON A GPU.
"""

from __future__ import annotations

EXIT_CODE = 3  # `sdrt serve` after a sticky CUDA error (2 is a user error, 1 a crash)

# cudaError_t values the CUDA runtime documents as leaving the context unusable, and their descriptions
STICKY_ERRORS = (
    "cudaErrorIllegalAddress", "cudaErrorLaunchFailure", "cudaErrorLaunchTimeout", "cudaErrorAssert",
    "cudaErrorHardwareStackError", "cudaErrorIllegalInstruction", "cudaErrorMisalignedAddress",
    "cudaErrorInvalidAddressSpace", "cudaErrorInvalidPc",
    "an illegal memory access was encountered", "unspecified launch failure",
)


def sticky_cuda_error(error: BaseException | None) -> str | None:
    """The sticky CUDA error `error` (or an exception it was raised from) reports, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        for name in STICKY_ERRORS:
            if name in text:
                return name
        error = error.__cause__ or error.__context__
    return None

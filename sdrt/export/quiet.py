"""Third-party chatter off while one of our commands runs: transformers' "requires torchvision" warnings and
the tqdm bars of transformers, diffusers and huggingface_hub ("Writing model shards", "Loading pipeline
components") say nothing a user of `sdrt export`, `tiny-model` or `demo` can act on, and bury our own lines.

The libraries' own switches are used (their loggers' verbosity, their progress-bar toggles), and the previous
settings come back afterwards, so a Python caller of sdrt keeps whatever it had configured. Errors still
show: the verbosity is ERROR, not off.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def quiet_third_party() -> Iterator[None]:
    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as transformers_logging

    saved = (transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled(),
             diffusers_logging.get_verbosity(), diffusers_logging.is_progress_bar_enabled(),
             hub_utils.are_progress_bars_disabled())
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        transformers_verbosity, transformers_bars, diffusers_verbosity, diffusers_bars, hub_disabled = saved
        transformers_logging.set_verbosity(transformers_verbosity)
        diffusers_logging.set_verbosity(diffusers_verbosity)
        if transformers_bars:
            transformers_logging.enable_progress_bar()
        if diffusers_bars:
            diffusers_logging.enable_progress_bar()
        if not hub_disabled:
            hub_utils.enable_progress_bars()

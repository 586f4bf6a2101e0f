"""`sdrt bench`: where the time of a generation goes, measured from outside the pipeline.

- `timing`: engine proxies and the step clock that split each denoising step into engine time and host
  overhead without touching the pipeline's code;
- `stats`: per-run records -> medians and p90s (the `Report` that the table, JSON and chart are made from);
- `output`: the stdout table and the JSON document; `chart`: the PNG (matplotlib, imported on use).

Torch-free, like the runtime it measures.
"""

from .stats import Report, RunRecord, StepTime, summarize
from .timing import TimedEngine, TimedPipeline, measure_run

__all__ = ["Report", "RunRecord", "StepTime", "TimedEngine", "TimedPipeline", "measure_run", "summarize"]

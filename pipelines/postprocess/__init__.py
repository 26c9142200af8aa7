"""Post-processing of the model answers: static boxes, roll-up, geofencing and smoothing.

See docs/postprocessing.md for the reasoning and the settings; `flow.assemble` runs
`find_static` before the event vote and `apply_postprocessing` after it.
"""

from trapline.pipelines.postprocess.apply import apply_postprocessing, deployment_country
from trapline.pipelines.postprocess.decision import Decision
from trapline.pipelines.postprocess.options import PostprocessOptions
from trapline.pipelines.postprocess.static import StaticDetections, StaticGroup, find_static

__all__ = [
    "Decision",
    "PostprocessOptions",
    "StaticDetections",
    "StaticGroup",
    "apply_postprocessing",
    "deployment_country",
    "find_static",
]

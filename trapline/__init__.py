"""Trapline: camera-trap photos in, species tables out.

The code lives in the design card's folders (`pipelines/`, `services/`, `models/`), which
pyproject.toml maps into this package as `trapline.pipelines`, `trapline.services` and
`trapline.models`.
"""

__version__ = "0.1.0"

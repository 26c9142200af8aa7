"""Trapline: camera-trap photos in, species tables out.

The code lives in the design card's folders (`pipelines/`, `services/`, `models/`), which
pyproject.toml maps into this package as `trapline.pipelines`, `trapline.services` and
`trapline.models`. Beside this file, `errors.py`: the one classification of errors (outage or
the input's fault), below all three.
"""

__version__ = "0.1.0"

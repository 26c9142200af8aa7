"""Country of a point, offline: the deployments file's coordinates -> ISO 3166-1 alpha-2.

Uses the country outlines that the `countryinfo` package ships (pure Python, ~400 kB, no GIS
stack; reverse_geocoder would pull in scipy, geopandas GDAL). Quirks relied on:
- `CountryInfo.all()` lists names without outlines; `CountryInfo(name).geo_json()` gives a
  GeoJSON FeatureCollection (lon, lat rings) and `.iso(2)` the code. 173 of its 256 entries
  have an outline; small islands (e.g. Singapore, Åland) have none and resolve to no country.
- The outlines are coarse (Natural Earth 1:110m): a camera within ~10 km of a border or a coast
  can land in the neighbour or in the sea. That is why the deployments file's `country` wins and
  this is only the fallback; a point in no outline gets no country, so no geofence, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True, slots=True)
class _Outline:
    code: str
    box: tuple[float, float, float, float]  # lon_min, lat_min, lon_max, lat_max
    rings: tuple[np.ndarray, ...]  # (n, 2) lon/lat; outer rings and holes alike (even-odd rule)


@lru_cache(maxsize=1)
def _outlines() -> tuple[_Outline, ...]:
    from countryinfo import CountryInfo  # imported here: only runs without a country column

    outlines = []
    for name in CountryInfo.all():
        country = CountryInfo(name)
        try:
            code, shape = country.iso(2), country.geo_json()
        except (KeyError, TypeError, ValueError):
            continue
        if not code or not shape:
            continue
        rings = []
        for feature in shape.get("features", []):
            geometry = feature.get("geometry") or {}
            polygons = geometry.get("coordinates", [])
            if geometry.get("type") == "Polygon":
                polygons = [polygons]
            for polygon in polygons:
                rings.extend(np.asarray(ring, dtype=np.float64)[:, :2] for ring in polygon)
        if rings:
            stacked = np.concatenate(rings)
            box = (*stacked.min(axis=0), *stacked.max(axis=0))
            outlines.append(_Outline(str(code).upper(), tuple(map(float, box)), tuple(rings)))
    return tuple(outlines)


def _inside(lon: float, lat: float, rings: tuple[np.ndarray, ...]) -> bool:
    """Even-odd ray casting over all rings (holes count as crossings too)."""
    inside = False
    for ring in rings:
        x1, y1 = ring[:, 0], ring[:, 1]
        x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
        crosses = (y1 > lat) != (y2 > lat)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x1 + (lat - y1) * (x2 - x1) / (y2 - y1)
        inside ^= bool(np.count_nonzero(crosses & (lon < x_at)) % 2)
    return inside


@lru_cache(maxsize=4096)
def country_at(latitude: float, longitude: float) -> str | None:
    """ISO alpha-2 code of the country whose outline holds the point, else None."""
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        return None
    for outline in _outlines():
        lon_min, lat_min, lon_max, lat_max = outline.box
        if lon_min <= longitude <= lon_max and lat_min <= latitude <= lat_max:
            if _inside(longitude, latitude, outline.rings):
                return outline.code
    return None

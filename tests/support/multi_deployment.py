"""A generated multi-deployment set: the sample's photos re-dated into four cameras.

Four deployments in three time zones (an IANA zone, two fixed offsets, one camera missing from
the deployments file, so on UTC) over more than 90 days, so the report's local times, weekly
binning and map, and `sort`'s per-deployment folders, are checked on more than the two-camera
sample. Each photo is re-encoded with a new EXIF DateTimeOriginal (its camera-local wall time),
so every file has its own bytes (media_id) and the expected local times are known exactly.
"""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from pathlib import Path

from PIL import Image

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "photos"
_DATETIME_ORIGINAL = 0x9003
_EXIF_IFD = 0x8769

# deployment -> (sample folder, day shift, zone or None = not in the file, latitude, longitude)
PLAN = {
    "ridge-1": ("deployment-a", 0, "Europe/Berlin", 47.61, 10.95),
    "ridge-2": ("deployment-b", 30, "+01:00", 47.12, 11.40),
    "valley-3": ("deployment-a", 150, "-05:00", 45.20, -73.60),
    "orphan-4": ("deployment-b", 60, None, None, None),
}
PHOTOS_PER_DEPLOYMENT = 10


def write_multi_deployment(root: Path) -> tuple[Path, Path, dict[str, datetime]]:
    """Write ROOT/photos/<deployment>/*.jpg and ROOT/deployments.csv.

    Returns the photo folder, the deployments file and each photo's camera-local time by path.
    """
    photos = root / "photos"
    local_times: dict[str, datetime] = {}
    for deployment, (source, shift, _, _, _) in PLAN.items():
        folder = photos / deployment
        folder.mkdir(parents=True)
        for path in sorted((SAMPLE / source).glob("IMG_*.jpg"))[:PHOTOS_PER_DEPLOYMENT]:
            with Image.open(path) as image:
                exif = image.getexif()
                ifd = exif.get_ifd(_EXIF_IFD)
                taken = datetime.strptime(ifd[_DATETIME_ORIGINAL], "%Y:%m:%d %H:%M:%S")
                taken += timedelta(days=shift)
                ifd[_DATETIME_ORIGINAL] = taken.strftime("%Y:%m:%d %H:%M:%S")
                target = folder / path.name
                image.save(target, "JPEG", quality=90, exif=exif)
            local_times[str(target)] = taken
    deployments = root / "deployments.csv"
    with deployments.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["deploymentID", "locationName", "latitude", "longitude", "timezone"])
        for deployment, (_, _, zone, lat, lon) in PLAN.items():
            if zone is not None:
                writer.writerow(
                    [
                        deployment,
                        f"{deployment} site",
                        lat if lat is not None else "",
                        lon if lon is not None else "",
                        zone,
                    ]
                )
    return photos, deployments, local_times

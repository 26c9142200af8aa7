"""Videos: one media row per clip, per-frame detections with their frame numbers, clear refusals.

The clips are encoded here with PyAV from the sample's own photos (blank frames, then a burst
with an animal), so the real demo detector has something to find and we know in which frames.
"""

from __future__ import annotations

import io
import shutil
from datetime import datetime, timezone
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from trapline.pipelines.readers import read_table
from trapline.pipelines.video import decode_video
from trapline.services.run.folder import run_folder
from trapline.services.settings import Settings
from trapline.services.tools.sort import sort_results

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "photos"
BLANK = SAMPLE / "deployment-a" / "IMG_0009.jpg"  # ground truth: blank
DEER = SAMPLE / "deployment-a" / "IMG_0001.jpg"  # ground truth: red deer, a large box
FPS = 5
BLANK_FRAMES, DEER_FRAMES = 10, 10  # 2 s blank, then 2 s with the deer


def encode_clip(container: str, codec: str, when: datetime | None = None) -> bytes:
    """A 640x480 clip at 5 fps: BLANK_FRAMES of the blank scene, then DEER_FRAMES of the deer."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        if when is not None:
            out.metadata["creation_time"] = when.strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        scenes = [BLANK] * BLANK_FRAMES + [DEER] * DEER_FRAMES
        for path in scenes:
            pixels = np.asarray(Image.open(path).convert("RGB").resize((640, 480)))
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "container, codec, suffix",
    [("mp4", "libx264", ".mp4"), ("avi", "mpeg4", ".avi"), ("mov", "mpeg4", ".mov")],
)
def test_decode_samples_at_the_requested_rate(container, codec, suffix):
    video = decode_video(
        encode_clip(container, codec), sample_fps=2.0, max_frames=100, max_duration_s=60,
        min_long_side=320, max_pixels=10**8,
    )  # fmt: skip
    numbers = [n for n, _ in video.frames]
    assert numbers == [0, 3, 5, 8, 10, 13, 15, 18]  # 2 per second of a 5 fps clip, on a 0.5 s grid
    assert video.width == 640 and video.height == 480
    assert all(image.size == (320, 240) for _, image in video.frames)  # decoded at reduced scale
    assert video.duration_s == pytest.approx(4.0, abs=0.25)


def test_a_long_clip_is_sampled_sparser_not_cut_short():
    video = decode_video(
        encode_clip("mp4", "libx264"), sample_fps=5.0, max_frames=4, max_duration_s=60,
        min_long_side=160, max_pixels=10**8,
    )  # fmt: skip
    numbers = [n for n, _ in video.frames]
    assert len(numbers) == 4 and numbers[-1] >= 15  # spread over the whole 4 s, ends in the deer


def test_refusals_name_the_limit():
    from trapline.pipelines.types import StageError

    clip = encode_clip("mp4", "libx264")
    with pytest.raises(StageError, match="video_max_duration_s") as too_long:
        decode_video(
            clip, sample_fps=1, max_frames=10, max_duration_s=2, min_long_side=64, max_pixels=10**8
        )
    assert too_long.value.kind == "too_long"
    with pytest.raises(StageError, match="max_image_pixels"):
        decode_video(
            clip, sample_fps=1, max_frames=10, max_duration_s=60, min_long_side=64, max_pixels=1000
        )
    with pytest.raises(StageError) as junk:
        decode_video(
            b"\x00" * 5000,
            sample_fps=1,
            max_frames=10,
            max_duration_s=60,
            min_long_side=64,
            max_pixels=10**8,
        )
    assert junk.value.kind in ("not_a_video", "corrupt")


def test_a_video_in_a_folder_run_is_one_media_row_with_per_frame_detections(tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(SAMPLE / "deployment-a", photos / "cam-1")
    when = datetime(2024, 5, 7, 6, 15, tzinfo=timezone.utc)
    (photos / "cam-1" / "CLIP0001.mp4").write_bytes(encode_clip("mp4", "libx264", when))
    (photos / "cam-1" / "BROKEN.avi").write_bytes(b"RIFF not really a video" * 100)
    results = tmp_path / "results"
    summary = run_folder(
        str(photos), str(results), Settings(workers=0, video_fps=2.0, batch_size=4)
    )
    media = read_table(str(results), "media").to_pandas()
    videos = media[media.uri.str.endswith(".mp4")]
    assert len(videos) == 1  # one row per video, not per frame
    video = videos.iloc[0]
    assert video.width == 640 and video.height == 480
    assert video.timestamp == when and video.timestamp_source == "exif"  # container creation_time
    assert video.observation_type == "animal" and video.animal_count >= 1
    obs = read_table(str(results), "observations").to_pandas()
    mine = obs[obs.media_id == video.media_id]
    frames = mine.frame_number.tolist()
    assert frames == sorted(frames) and set(frames) <= {0, 3, 5, 8, 10, 13, 15, 18}
    assert min(frames) >= BLANK_FRAMES  # the animal is only in the second half of the clip
    assert (mine.category == "animal").all()
    assert obs[~obs.media_id.isin(videos.media_id)].frame_number.isna().all()  # photos: null
    failures = read_table(str(results), "failures").to_pandas()
    broken = failures[failures.uri.str.endswith("BROKEN.avi")]
    assert len(broken) == 1 and broken.iloc[0].stage == "decode"
    assert summary.processed == len(media) and summary.failed == len(failures)
    # the report counts it as a video; the spreadsheet has its row
    from trapline.services.tools.report import build_report

    counted = build_report(str(results), str(tmp_path / "report"))
    assert counted.videos == 1 and counted.media == len(media)
    assert "CLIP0001.mp4,video," in (tmp_path / "report" / "photos.csv").read_text()
    # sort files the clip by its label like a photo
    report = sort_results(str(results), str(tmp_path / "sorted"))
    clip = next(i for i in report.items if i.source.endswith("CLIP0001.mp4"))
    assert (
        clip.status == "done"
        and Path(clip.destination).read_bytes() == (photos / "cam-1" / "CLIP0001.mp4").read_bytes()
    )


def test_a_video_announced_by_an_upload_event_is_one_media_row(tansu, kafka_topic, tmp_path):
    """Service mode takes videos like photos: event -> frames -> one media row, frame numbers kept."""
    from test_stream import run_worker, settings_for

    from trapline.services.tools.submit import submit_folder

    card = tmp_path / "card" / "cam-v"
    card.mkdir(parents=True)
    (card / "CLIP0002.mp4").write_bytes(encode_clip("mp4", "libx264"))
    shutil.copy(DEER, card / "IMG_0001.jpg")
    topic = kafka_topic("uploads", partitions=1)
    assert submit_folder(str(card.parent), tansu.bootstrap, topic, "cam-v").submitted == 2

    run_worker(settings_for(tansu, topic, "g-video", video_fps=2.0, batch_size=4), tmp_path / "out")

    media = read_table(str(tmp_path / "out"), "media").to_pandas()
    assert sorted(Path(u).name for u in media.uri) == ["CLIP0002.mp4", "IMG_0001.jpg"]
    video = media[media.uri.str.endswith(".mp4")].iloc[0]
    assert video.source.startswith(f"{topic}/0/") and video.observation_type == "animal"
    obs = read_table(str(tmp_path / "out"), "observations").to_pandas()
    frames = obs[obs.media_id == video.media_id].frame_number.tolist()
    assert frames and min(frames) >= BLANK_FRAMES
    assert read_table(str(tmp_path / "out"), "failures").num_rows == 0

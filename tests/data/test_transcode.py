"""--resize's re-encoding: rotation applied to the pixels, timestamps kept, sizes even, never up."""

from fractions import Fraction

import av
import numpy as np

from cmae.data.decoding import available_backends, open_video
from cmae.data.transcode import ResizeJob, resize_video, scaled_size


def test_scaled_size_keeps_the_aspect_evenly_and_never_grows():
    assert scaled_size(640, 360, 320) == (568, 320)
    assert scaled_size(360, 640, 320) == (320, 568)
    assert scaled_size(200, 100, 320) == (200, 100)
    assert scaled_size(129, 97, 64) == (86, 64)


def write(path, frames, rotation=0, time_base=None, steps=None):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        if time_base:
            stream.codec_context.time_base = time_base
        pts = 0
        for k, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if steps:
                frame.pts, frame.time_base = pts, time_base
                pts += steps[k % len(steps)]
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_a_rotated_video_comes_out_upright_without_the_flag(tmp_path):
    frame = np.zeros((64, 96, 3), np.uint8)
    frame[:16, :16] = 255  # top left as stored; the flag turns it 90 degrees counter-clockwise
    write(tmp_path / "phone.mp4", [frame] * 4, rotation=90, time_base=Fraction(1, 1000), steps=[40, 120])
    status, job, reason = resize_video(ResizeJob(tmp_path / "phone.mp4", tmp_path / "out.mp4", 32))
    assert status == "done", reason
    with av.open(str(job.target)) as container:
        frames = list(container.decode(video=0))
    assert getattr(frames[0], "rotation", 0) == 0 and (frames[0].width, frames[0].height) == (32, 48)
    assert [round(float(f.pts * f.time_base), 3) for f in frames] == [0, 0.04, 0.16, 0.2]  # the source's times
    for backend in available_backends():
        with open_video(job.target, backend) as reader:
            shown = reader.get_frames([0])[0, 0]  # [48, 32], portrait
        assert shown[-6:, :6].float().mean() > 200 and shown[:6, :6].float().mean() < 50


def test_variable_frame_timestamps_survive(tmp_path):
    frames = [np.full((48, 48, 3), 10 * k, np.uint8) for k in range(12)]
    write(tmp_path / "vfr.mp4", frames, time_base=Fraction(1, 1000), steps=[40, 120])
    status, job, reason = resize_video(ResizeJob(tmp_path / "vfr.mp4", tmp_path / "out.mp4", 32))
    assert status == "done", reason
    seconds = []
    for path in (tmp_path / "vfr.mp4", job.target):
        with av.open(str(path)) as container:
            seconds.append([float(f.pts * f.time_base) for f in container.decode(video=0)])
    assert np.allclose(seconds[0], seconds[1], atol=1e-3) and len(seconds[1]) == 12

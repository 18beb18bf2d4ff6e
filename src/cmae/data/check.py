"""`cmae prepare check LIST` and `cmae prepare DATASET ... --check`: decode every listed file, every
frame, as training would read it, and name the ones that fail. Training only meets a corrupt file
when it samples it, possibly hours in; this finds them all before a run starts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from cmae.data.decoding import DecodeError, is_image, load_image, open_video
from cmae.data.lists import Sample

CHUNK = 32  # frames decoded per call: a long, large video is never held in memory whole


def sample_error(sample: Sample, backend: str = "auto") -> str | None:
    """None when every frame of `sample` decodes, else one line naming the file and the reason."""
    try:
        if sample.is_frame_folder:
            for k in range(sample.num_frames):
                load_image.__wrapped__(sample.path / sample.frame_template.format(sample.frame_start + k))
        elif is_image(sample.path):
            load_image.__wrapped__(sample.path)  # not the cache training uses: a check reads each file once
        else:
            with open_video(sample.path, backend) as reader:
                for start in range(0, reader.num_frames, CHUNK):
                    reader.get_frames(range(start, min(start + CHUNK, reader.num_frames)))
    except DecodeError as error:  # it names the file already
        return str(error)
    except Exception as error:  # each decoder has its own error types: the reason is what the user needs
        return f"{sample.path}: {type(error).__name__}: {error}"
    return None


def undecodable(samples: Sequence[Sample], workers: int = 1, backend: str = "auto") -> Iterator[str]:
    """The errors of the samples that do not decode, in list order; `workers` threads decode
    (the decoders release the GIL)."""
    with ThreadPoolExecutor(max(workers, 1)) as pool:
        for error in pool.map(lambda sample: sample_error(sample, backend), samples):
            if error is not None:
                yield error

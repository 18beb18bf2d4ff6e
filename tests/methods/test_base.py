"""The method contract: every registered method is a `Method` whose view sampler gives it its views."""

import pytest
import torch

from cmae.config import load_config
from cmae.data.views import build_view
from cmae.methods import METHODS, Method, resolve_method
from tests.data.test_views import FakeSource
from tests.helpers import TINY_HEADS, TINY_INPUT, TINY_MODEL


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_view_sampler_gives_the_method_its_inputs(name):
    frames = "data.num_frames=1" if METHODS[name].view_sampler == "frame_pair" else "data.num_frames=4"
    config = resolve_method(load_config(None, [*TINY_MODEL, *TINY_HEADS, *TINY_INPUT, frames, f"method.name={name}",
                                               "model.cls_token=true", "model.tubelet_size=1"]))
    assert config.data.views == METHODS[name].view_sampler  # auto followed the method
    torch.manual_seed(0)
    method = METHODS[name](config)
    assert isinstance(method, Method) and method.name == name
    item = build_view(config.data, train=True)(FakeSource(8, size=40))
    batch = {key: item[key][None].float() for key in method.views}  # a batch of one...
    batch = {key: value.expand(4, *value.shape[1:]).contiguous() for key, value in batch.items()}  # ...of four
    assert torch.isfinite(method(batch).loss)
    method.set_epoch(0.5)  # the hooks exist on every method
    method.after_step(1, 10)
    with pytest.raises(KeyError, match=f"method '{name}' needs the batch keys"):
        method({"other": batch[method.views[0]]})

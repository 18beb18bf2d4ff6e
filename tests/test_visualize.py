"""`cmae visualize` / `cmae plot`: leak-free de-normalisation, the PNGs, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from cmae.cli import main
from cmae.config import ConfigError, load_config
from cmae.engine.pretrain import pretrain
from cmae.masking import random_mask, tube_mask
from cmae.models.patchify import normalized_pixel_targets
from cmae.visualize import denormalize_patches, neighbour_weights, plot_runs, visualize
from tests.helpers import TINY_ENCODER, TINY_INPUT, TINY_MODEL, tiny_overrides

PRESET = "configs/demo/videomae.yaml"
# a random-init tiny model: no data set needed
RANDOM_TINY = TINY_MODEL + TINY_INPUT + ["data.num_frames=4"]
GRID = (2, 4, 4)  # T', H', W'
P = 2 * 4 * 4 * 3  # tubelet 2, patch 4, RGB


def patches_and_mask(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random patches with a different mean/scale per patch `[2, 32, P]` and a tube mask `[2, 32]`."""
    g = torch.Generator().manual_seed(seed)
    n = GRID[0] * GRID[1] * GRID[2]
    patches = torch.randn(2, n, P, generator=g) * torch.rand(2, n, 1, generator=g) * 3 + torch.randn(2, n, 1, generator=g)
    return patches, tube_mask(2, GRID, 0.75, generator=g).masked


@pytest.mark.parametrize("mode", ["patch", "channel"])
def test_true_stats_invert_the_targets_exactly(mode):
    patches, masked = patches_and_mask()
    target = normalized_pixel_targets(patches, mode)
    restored = denormalize_patches(target, patches, masked, mode, GRID, true_stats=True)
    torch.testing.assert_close(restored, patches, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["patch", "channel"])
def test_neighbour_stats_do_not_leak_the_masked_patch(mode):
    patches, masked = patches_and_mask()
    target = normalized_pixel_targets(patches, mode)
    restored = denormalize_patches(target, patches, masked, mode, GRID)
    # visible patches use their own statistics: a perfect prediction gives them back
    torch.testing.assert_close(restored[~masked], patches[~masked], atol=1e-4, rtol=0)
    # a masked patch with other true pixels (same prediction): its output must not move
    b, n = masked.nonzero()[0].tolist()
    changed = patches.clone()
    changed[b, n] = changed[b, n] * 10 + 5
    again = denormalize_patches(target, changed, masked, mode, GRID)
    torch.testing.assert_close(again, restored)
    # ... while the true statistics would have followed the change (the leak being avoided)
    leaky = denormalize_patches(target, changed, masked, mode, GRID, true_stats=True)
    assert not torch.allclose(leaky[b, n], restored[b, n])


def test_neighbour_weights_pick_the_nearest_visible_patches_of_the_same_time_step():
    grid = (2, 3, 3)
    masked = torch.ones(1, 18, dtype=torch.bool)
    masked[0, [0, 2, 4, 8]] = False  # time step 0: corners (0,0), (0,2), (2,2) and the centre visible
    masked[0, 9 + 4] = False  # time step 1: only the centre
    weights = neighbour_weights(masked, grid, k=2)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 18))
    assert (weights[..., masked[0]] == 0).all()  # never a masked patch
    # patch (2, 0) at time 0: the centre (squared distance 2), then (0, 0) and (2, 2) tie at 4: token order
    assert weights[0, 6].nonzero().flatten().tolist() == [0, 4]
    torch.testing.assert_close(weights[0, 6, [0, 4]], torch.full((2,), 0.5))
    # a time step-1 patch only sees time step 1's one visible patch
    assert weights[0, 9].nonzero().flatten().tolist() == [13]
    # a time step with nothing visible falls back to every visible patch of the sample
    masked[0, 13] = True
    fallback = neighbour_weights(masked, grid, k=2)[0, 9]
    assert fallback.nonzero().flatten().tolist() == [0, 2, 4, 8]
    torch.testing.assert_close(fallback[[0, 2, 4, 8]], torch.full((4,), 0.25))


def test_none_mode_returns_the_prediction():
    patches, masked = patches_and_mask()
    pred = torch.randn_like(patches)
    assert denormalize_patches(pred, patches, masked, "none", GRID) is pred
    with pytest.raises(ValueError, match="unknown normalised-pixel mode 'pix'"):
        denormalize_patches(pred, patches, masked, "pix", GRID)
    # random masking can leave a time step fully masked: the fallback keeps the output finite
    masked = random_mask(2, 32, 0.9).masked
    assert denormalize_patches(pred, patches, masked, "channel", GRID).isfinite().all()


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(synth_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "videomae"
    pretrain(load_config(PRESET, tiny_overrides(synth_dir, **{"train.epochs": 1})), run)
    return run


@pytest.fixture(scope="module")
def png_input(synth_dir, tmp_path_factory):
    """A PNG image (frame 0 of a synthetic clip), to visualise as a one-frame clip."""
    from cmae.data.dataset import open_source

    video = synth_dir / (synth_dir / "val.txt").read_text().split()[0]
    source = open_source(video)
    frame = source.get_frames([0])[0].permute(1, 2, 0).numpy()
    source.close()
    path = tmp_path_factory.mktemp("image") / "frame.png"
    Image.fromarray(frame).save(path)
    return path


def first_video(synth_dir):
    return synth_dir / (synth_dir / "val.txt").read_text().split()[0]


def assert_png(path, min_width=300, min_height=300):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_width and image.height >= min_height, image.size


def test_visualize_random_checkpoint_on_a_video(synth_dir, tmp_path):
    result = visualize("random", first_video(synth_dir), tmp_path / "out" / "rec.png", config_path=PRESET,
                       overrides=RANDOM_TINY)
    assert_png(tmp_path / "out" / "rec.png")
    assert math.isfinite(result["loss"]) and result["stats"] == "neighbours"
    assert result["frames"] == [2, 3, 4, 5]  # the centred clip of 4 of 8 frames
    assert result["mask_ratio"] == pytest.approx(14 / 16)  # tube mask: floor(0.9 * 16) of the 4x4 places
    again = visualize("random", first_video(synth_dir), tmp_path / "again.png", config_path=PRESET,
                      overrides=RANDOM_TINY)
    assert again["loss"] == result["loss"]  # deterministic: same clip, same seeded mask


def test_visualize_trained_checkpoint_on_video_and_image(trained_run, synth_dir, png_input, tmp_path):
    checkpoint = trained_run / "checkpoint-last.pt"
    video = visualize(checkpoint, first_video(synth_dir), tmp_path / "video.png", seed=1)
    image = visualize(checkpoint, png_input, tmp_path / "image.png", true_stats=True)
    for result in (video, image):
        assert math.isfinite(result["loss"])
        assert_png(result["output"])
    assert image["frames"] == [0, 0, 0, 0] and image["stats"] == "true"


def test_visualize_image_mae_and_pixel_targets(png_input, tmp_path):
    # image MAE (tubelet 1, one frame, per-patch targets) and raw-pixel targets
    result = visualize("random", png_input, tmp_path / "mae.png", config_path="configs/demo/mae.yaml",
                       overrides=TINY_ENCODER + ["data.image_size=32", "data.num_frames=1"])
    assert math.isfinite(result["loss"]) and result["frames"] == [0]
    assert_png(tmp_path / "mae.png", min_width=200)
    raw = visualize("random", png_input, tmp_path / "raw.png", config_path=PRESET,
                    overrides=RANDOM_TINY + ["method.norm_pix=none"])
    assert raw["stats"] == "none"


def fake_run(folder, losses, with_con=False):
    folder.mkdir(parents=True)
    with (folder / "metrics.jsonl").open("w") as handle:
        for step, value in enumerate(losses, 1):
            record = {"step": step, "epoch": step / 10, "loss": value, "loss_rec": value, "lr": 1e-3}
            if with_con:
                record["loss_con"] = value / 2
            handle.write(json.dumps(record) + "\n")
    return folder


def test_plot_runs(tmp_path):
    a = fake_run(tmp_path / "videomae", [1.0, 0.8, 0.6])
    b = fake_run(tmp_path / "cmae_v", [1.2, 0.9, 0.5, 0.4], with_con=True)
    output = plot_runs([a, b], tmp_path / "plots" / "loss.png")
    assert output == tmp_path / "plots" / "loss.png"
    assert_png(output, min_width=900, min_height=200)  # default keys: loss, loss_rec, loss_con -> 3 panels
    plot_runs([a], tmp_path / "one.png", keys=["loss_rec"])
    assert_png(tmp_path / "one.png", min_width=300, min_height=200)
    with pytest.raises(ConfigError, match="'loss_kl'"):
        plot_runs([a, b], tmp_path / "bad.png", keys=["loss_rec", "loss_kl"])
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_runs([tmp_path / "nowhere"], tmp_path / "bad.png")


def test_cli_visualize_and_plot(trained_run, synth_dir, tmp_path, capsys):
    main(["visualize", "--checkpoint", "random", "--config", PRESET, "--input", str(first_video(synth_dir)),
          "--output", str(tmp_path / "cli.png"), "--seed", "3", "--true-stats", *RANDOM_TINY])
    assert_png(tmp_path / "cli.png")
    assert "patch statistics: true" in capsys.readouterr().out
    main(["plot", str(trained_run), "--output", str(tmp_path / "curves.png"), "--keys", "loss_rec"])
    assert_png(tmp_path / "curves.png", min_width=300, min_height=200)
    with pytest.raises(SystemExit) as stopped:
        main(["plot", str(trained_run), "--output", str(tmp_path / "x.png"), "--keys", "loss_nope"])
    assert stopped.value.code == 2
    assert "loss_nope" in capsys.readouterr().err

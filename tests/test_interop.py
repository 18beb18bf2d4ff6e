"""cmae's videomae with weights converted from Hugging Face's VideoMAEForPreTraining computes HF's loss."""

import pytest
import torch

from cmae.config import load_config
from cmae.interop import videomae_from_hf
from cmae.masking import make_mask
from cmae.methods import build_method

transformers = pytest.importorskip("transformers")


def test_videomae_from_hf_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    hf = transformers.VideoMAEForPreTraining(transformers.VideoMAEConfig(
        image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=48, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=192, decoder_hidden_size=32, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=128, qkv_bias=True, use_mean_pooling=False,
        norm_pix_loss=True, layer_norm_eps=1e-6,
    ))
    config = load_config("configs/demo/videomae.yaml", [
        "model.name=vit_pico_p4", "model.patch_size=8", "model.decoder_dim=32", "model.decoder_depth=1",
        "data.num_frames=4", "data.image_size=32", "model.pos_embed=videomae_1d"])
    # vit_pico_p4 is 48 wide with 2 blocks and 2 heads, as the HF model above
    method = build_method(config)
    state = videomae_from_hf(hf.state_dict())
    method.load_state_dict(state, strict=True)
    hf.decoder.norm.eps = 1e-6  # HF's decoder norm uses PyTorch's default eps; cmae's 1e-6
    clip = torch.randn(2, 3, 4, 32, 32)
    mask = make_mask("tube", 2, (2, 4, 4), 0.75, "cpu")
    hf_loss = hf(clip.transpose(1, 2), bool_masked_pos=mask.masked).loss
    loss = method.reconstruct(clip, mask).loss
    assert torch.allclose(loss, hf_loss, atol=1e-5), (loss, hf_loss)
    hf_loss.backward()
    loss.backward()
    assert torch.allclose(method.encoder.patch_embed.proj.weight.grad,
                          hf.videomae.embeddings.patch_embeddings.projection.weight.grad, atol=1e-6)


# --- importing the field's checkpoints (no hub: random-init models saved in the official layouts) ---

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from cmae.engine.loading import load_pretrained  # noqa: E402
from cmae.interop import WeightsError, import_weights, load_imported  # noqa: E402
from cmae.models.pos_embed import position_table  # noqa: E402
from tests.helpers import TINY_INPUT, TINY_MODEL  # noqa: E402

timm = pytest.importorskip("timm")

TINY_HF = dict(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=48, num_hidden_layers=2,
               num_attention_heads=2, intermediate_size=192, use_mean_pooling=False, layer_norm_eps=1e-6)


def official_videomae_layout(hf_state: dict, prefix: str = "encoder.") -> dict:
    """An HF VideoMAEModel's weights renamed to the official VideoMAE code's layout: fused qkv
    weights and separate q_bias / v_bias (no key bias), `encoder.`-prefixed."""
    out = {f"{prefix}patch_embed.proj.weight": hf_state["embeddings.patch_embeddings.projection.weight"],
           f"{prefix}patch_embed.proj.bias": hf_state["embeddings.patch_embeddings.projection.bias"],
           f"{prefix}norm.weight": hf_state["layernorm.weight"], f"{prefix}norm.bias": hf_state["layernorm.bias"]}
    layers = {int(k.split(".")[2]) for k in hf_state if k.startswith("encoder.layer.")}
    for i in layers:
        hf, ours = f"encoder.layer.{i}", f"{prefix}blocks.{i}"
        out[f"{ours}.attn.qkv.weight"] = torch.cat(
            [hf_state[f"{hf}.attention.attention.{n}.weight"] for n in ("query", "key", "value")])
        for theirs, name in (("q", "query"), ("v", "value")):  # newer transformers: q_bias; older: query.bias
            bias = hf_state.get(f"{hf}.attention.attention.{theirs}_bias")
            out[f"{ours}.attn.{theirs}_bias"] = hf_state[f"{hf}.attention.attention.{name}.bias"] if bias is None else bias
        for theirs, name in (("attention.output.dense", "attn.proj"), ("intermediate.dense", "mlp.fc1"),
                             ("output.dense", "mlp.fc2"), ("layernorm_before", "norm1"), ("layernorm_after", "norm2")):
            for part in ("weight", "bias"):
                out[f"{ours}.{name}.{part}"] = hf_state[f"{hf}.{theirs}.{part}"]
    return out


def randomize_biases(model: torch.nn.Module) -> None:
    """Random init leaves every bias at zero, so a dropped or misplaced bias would go unseen."""
    with torch.no_grad():
        for name, value in model.named_parameters():
            if name.endswith(("bias", "q_bias", "v_bias")):
                value.normal_(std=0.1)


def test_timm_vit_b16_with_maes_table_matches_timm(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).eval()
    randomize_biases(model)
    with torch.no_grad():  # MAE's checkpoints carry the fixed 2D table, with a zero row for the class token
        model.pos_embed.copy_(torch.cat([torch.zeros(1, 768), position_table("mae_2d", 768, (1, 14, 14))])[None])
    path = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(model="vit_base", lr=1.5e-4)}, path)
    imported = import_weights(path)
    assert (imported.format, imported.pos_embed, imported.cls_token) == ("timm", "mae_2d", True)
    config, method = load_pretrained(path, "configs/pretrain/mae_vit_b_in1k.yaml")
    image = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = model.forward_features(image)
        ours = method.encoder(image[:, :, None])
    assert config.model.pos_embed == "mae_2d" and config.model.cls_token
    assert (ours - expected).abs().max() < 1e-5


def test_hf_videomae_model_folder_matches_hf(tmp_path):
    torch.manual_seed(0)
    hf = transformers.VideoMAEModel(transformers.VideoMAEConfig(
        image_size=224, patch_size=16, num_frames=16, tubelet_size=2, hidden_size=384, num_hidden_layers=12,
        num_attention_heads=6, intermediate_size=1536, use_mean_pooling=False, layer_norm_eps=1e-6)).eval()
    randomize_biases(hf)
    hf.save_pretrained(tmp_path / "hf")
    _, method = load_pretrained(tmp_path / "hf", "configs/pretrain/videomae_vit_b_k400.yaml", ["model.name=vit_small"])
    hf.config.layer_norm_eps = 1e-12  # Hugging Face's default: reported, not hidden
    hf.config.save_pretrained(tmp_path / "hf")
    assert "layer_norm_eps is 1e-12" in load_imported(method, import_weights(tmp_path / "hf"))
    clip = torch.randn(1, 3, 16, 224, 224)
    with torch.no_grad():
        expected = hf(clip.transpose(1, 2)).last_hidden_state
        ours = method.encoder(clip)
    assert (ours - expected).abs().max() < 1e-4


def test_official_videomae_layout_matches_hf_and_fuses_q_v_biases(tmp_path, capsys):
    torch.manual_seed(0)
    hf = transformers.VideoMAEModel(transformers.VideoMAEConfig(**TINY_HF)).eval()
    randomize_biases(hf)
    official = official_videomae_layout(hf.state_dict())
    official["mask_token"] = torch.zeros(1, 1, 32)  # a pre-training file's decoder part, dropped: no decoder here
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": official, "args": argparse.Namespace(model="pretrain_videomae")}, path)
    _, method = load_pretrained(path, "configs/demo/videomae.yaml", [*TINY_MODEL, *TINY_INPUT, "data.num_frames=4"])
    report = capsys.readouterr().out
    assert "official VideoMAE" in report and "position table videomae_1d" in report
    qkv_bias = method.encoder.blocks[1].attn.qkv.bias
    assert torch.equal(qkv_bias, torch.cat([official["encoder.blocks.1.attn.q_bias"], torch.zeros(48),
                                            official["encoder.blocks.1.attn.v_bias"]]))
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert (method.encoder(clip) - hf(clip.transpose(1, 2)).last_hidden_state).abs().max() < 1e-5


def test_timm_supervised_vit_with_a_learned_table_matches_timm_at_its_size_and_resampled(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).eval()  # learned pos_embed
    randomize_biases(model)
    torch.save(model.state_dict(), tmp_path / "vit_tiny.pth")
    imported = import_weights(tmp_path / "vit_tiny.pth")
    assert (imported.pos_embed, imported.pos_size) == ("learned", 14)
    for size in (224, 160):  # 14 x 14 as trained, and resampled to 10 x 10 as timm does for another input size
        _, method = load_pretrained(tmp_path / "vit_tiny.pth", "configs/pretrain/mae_vit_b_in1k.yaml",
                                    ["model.name=vit_tiny", f"data.image_size={size}"])
        theirs = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0, img_size=size,
                                   pretrained_cfg_overlay={"file": str(tmp_path / "vit_tiny.pth")}).eval()
        image = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert (method.encoder(image[:, :, None]) - theirs.forward_features(image)).abs().max() < 1e-4, size


def test_an_unknown_key_is_refused_by_name(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, init_values=1e-5)
    state = model.state_dict()
    state["pos_embed"] = torch.cat([torch.zeros(1, 192), position_table("mae_2d", 192, (1, 14, 14))])[None]
    torch.save(state, tmp_path / "layerscale.pth")  # timm's layer scale: cmae's blocks have none
    with pytest.raises(WeightsError, match=r"key 'blocks\.0\.ls1\.gamma' has no place"):
        import_weights(tmp_path / "layerscale.pth")


PAYLOAD = """
import pathlib


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __setstate__(self, state):  # runs when the file is unpickled
        pathlib.Path(state["marker"]).write_text("ran")
"""


def test_a_file_pickling_another_class_is_refused_without_running_it(tmp_path, monkeypatch):
    (tmp_path / "payload_module.py").write_text(PAYLOAD)
    monkeypatch.syspath_prepend(str(tmp_path))
    import payload_module

    path, marker = tmp_path / "evil.pth", tmp_path / "marker"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": payload_module.Payload(str(marker))}, path)
    with pytest.raises(WeightsError, match="refusing to load: it pickles payload_module.Payload"):
        import_weights(path)
    assert not marker.exists()  # its code never ran
    torch.load(path, weights_only=False)  # the control: unpickling it does run the class's code
    assert marker.read_text() == "ran"


def test_linprobe_reads_a_hugging_face_folder_and_finetune_inits_from_an_official_file(synth_dir, tmp_path):
    torch.manual_seed(0)
    hf = transformers.VideoMAEModel(transformers.VideoMAEConfig(**TINY_HF))
    randomize_biases(hf)
    hf.save_pretrained(tmp_path / "hf")
    torch.save({"model": official_videomae_layout(hf.state_dict())}, tmp_path / "official.pth")
    data = [f"data.train={synth_dir / 'train.txt'}", f"data.val={synth_dir / 'val.txt'}", *TINY_MODEL, *TINY_INPUT,
            "data.num_frames=4", "eval.batch_size=8"]
    cli = [sys.executable, "-m", "cmae.cli"]
    probe = subprocess.run([*cli, "linprobe", "--checkpoint", str(tmp_path / "hf"), "--config",
                            "configs/demo/videomae.yaml", "--output", str(tmp_path / "lp"), *data,
                            "eval.probe_epochs=3"], capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert "Hugging Face VideoMAE" in probe.stdout and "linprobe: top1" in probe.stdout
    assert "note" not in probe.stdout  # eps 1e-6 as cmae's: nothing to report
    tune = subprocess.run([*cli, "finetune", "--init", str(tmp_path / "official.pth"), "--config",
                           "configs/demo/videomae.yaml", "--output", str(tmp_path / "ft"), *data,
                           "finetune.epochs=1", "finetune.batch_size=8"], capture_output=True, text=True)
    assert tune.returncode == 0, tune.stderr[-2000:]
    assert "official VideoMAE" in tune.stdout and "finetune: top1" in tune.stdout


def test_mean_pooling_classifier_has_videomaes_layout(tmp_path, capsys):
    """HF's VideoMAEForVideoClassification (mean pooling: no final norm, fc_norm, classifier) -> cmae's
    fine-tuning classifier gives the same logits."""
    from cmae.engine.finetune import Classifier

    torch.manual_seed(0)
    hf = transformers.VideoMAEForVideoClassification(transformers.VideoMAEConfig(
        **{**TINY_HF, "use_mean_pooling": True}, num_labels=5)).eval()
    randomize_biases(hf)
    hf.save_pretrained(tmp_path / "hf")
    _, method = load_pretrained(tmp_path / "hf", "configs/demo/videomae.yaml", [*TINY_MODEL, *TINY_INPUT,
                                                                             "data.num_frames=4"])
    report = capsys.readouterr().out
    assert "no final norm" in report and "classification head: 4 tensors" in report
    classifier = Classifier(method.encoder, 5, "mean").eval()
    classifier.fc_norm.load_state_dict({"weight": hf.fc_norm.weight, "bias": hf.fc_norm.bias})
    classifier.head.load_state_dict(hf.classifier.state_dict())
    classifier.fc_norm.eps = hf.fc_norm.eps
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert (classifier(clip) - hf(clip.transpose(1, 2)).logits).abs().max() < 1e-5


def mae_st_reference(state: dict, clip: torch.Tensor, heads: int, final_norm: bool = True) -> torch.Tensor:
    """MAE-ST's encoder as its code describes it (models_vit / util/video_vit, sep_pos_embed, no class
    token), written out here: Conv3d patches in (t, h*w) order, spatial table repeated over time plus
    the temporal table repeated over space, blocks with separate q / k / v, the final norm."""
    import torch.nn.functional as F

    weight = state["patch_embed.proj.weight"]
    x = F.conv3d(clip, weight, state["patch_embed.proj.bias"], stride=weight.shape[2:])  # [B, D, T, H, W]
    b, d, t = x.shape[:3]
    x = x.flatten(3).permute(0, 2, 3, 1).reshape(b, -1, d)  # [B, T*H*W, D]
    hw = x.shape[1] // t
    x = x + state["pos_embed_spatial"].repeat(1, t, 1) + state["pos_embed_temporal"].repeat_interleave(hw, dim=1)
    norm = lambda y, name: F.layer_norm(y, (d,), state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-6)  # noqa: E731
    for i in range(len({k.split(".")[1] for k in state if k.startswith("blocks.")})):
        p = f"blocks.{i}"
        h = norm(x, f"{p}.norm1")
        q, k, v = (F.linear(h, state[f"{p}.attn.{n}.weight"], state[f"{p}.attn.{n}.bias"])
                   .reshape(b, -1, heads, d // heads).transpose(1, 2) for n in "qkv")
        attention = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(-1) @ v
        x = x + F.linear(attention.transpose(1, 2).reshape(b, -1, d), state[f"{p}.attn.proj.weight"],
                         state[f"{p}.attn.proj.bias"])
        h = F.gelu(F.linear(norm(x, f"{p}.norm2"), state[f"{p}.mlp.fc1.weight"], state[f"{p}.mlp.fc1.bias"]))
        x = x + F.linear(h, state[f"{p}.mlp.fc2.weight"], state[f"{p}.mlp.fc2.bias"])
    return norm(x, "norm") if final_norm else x


def test_mae_st_file_with_separable_learned_tables_matches_its_reference(tmp_path, capsys):
    torch.manual_seed(0)
    d, hidden, depth = 48, 192, 2
    shapes = {"patch_embed.proj.weight": (d, 3, 2, 8, 8), "patch_embed.proj.bias": (d,),
              "pos_embed_spatial": (1, 16, d), "pos_embed_temporal": (1, 2, d), "norm.weight": (d,), "norm.bias": (d,),
              "mask_token": (1, 1, 32), "decoder_embed.weight": (32, d)}  # a pre-training file's decoder: dropped
    for i in range(depth):
        for name, shape in (("norm1", (d,)), ("norm2", (d,)), ("attn.proj", (d, d)), ("mlp.fc1", (hidden, d)),
                            ("mlp.fc2", (d, hidden)), ("attn.q", (d, d)), ("attn.k", (d, d)), ("attn.v", (d, d))):
            shapes[f"blocks.{i}.{name}.weight"] = shape
            shapes[f"blocks.{i}.{name}.bias"] = (shape[0],)
    state = {k: torch.randn(shape) * 0.1 + (1.0 if k.endswith(("norm1.weight", "norm2.weight", "norm.weight")) else 0)
             for k, shape in shapes.items()}
    torch.save({"model": state, "args": argparse.Namespace(sep_pos_embed=True)}, tmp_path / "mae_st.pth")
    config, method = load_pretrained(tmp_path / "mae_st.pth", "configs/demo/videomae.yaml",
                                     [*TINY_MODEL, *TINY_INPUT, "data.num_frames=4"])
    assert (config.model.pos_embed, config.model.pos_size, config.model.pos_frames) == ("learned", 4, 2)
    assert "mae_st's pixel decoder: 2 tensors" in capsys.readouterr().out
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert (method.encoder(clip) - mae_st_reference(state, clip, heads=2)).abs().max() < 1e-5
    # a fine-tuned file: blocks, the mean of the tokens, then `norm` and `head`: cmae's mean-pooling classifier
    from cmae.engine.finetune import Classifier

    tuned = {k: v for k, v in state.items() if not k.startswith(("mask_token", "decoder_"))}
    tuned.update({"head.weight": torch.randn(5, d) * 0.1, "head.bias": torch.randn(5) * 0.1})
    torch.save({"model": tuned, "args": argparse.Namespace(sep_pos_embed=True)}, tmp_path / "mae_st_ft.pth")
    imported = import_weights(tmp_path / "mae_st_ft.pth")
    assert sorted(imported.head) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    _, method = load_pretrained(tmp_path / "mae_st_ft.pth", "configs/demo/videomae.yaml",
                                [*TINY_MODEL, *TINY_INPUT, "data.num_frames=4"])
    classifier = Classifier(method.encoder, 5, "mean").eval()
    classifier.load_state_dict(imported.head, strict=False)
    tokens = mae_st_reference(tuned, clip, heads=2, final_norm=False)
    pooled = torch.nn.functional.layer_norm(tokens.mean(1), (d,), tuned["norm.weight"], tuned["norm.bias"], eps=1e-6)
    with torch.no_grad():
        assert (classifier(clip) - (pooled @ tuned["head.weight"].T + tuned["head.bias"])).abs().max() < 1e-5


def test_finetune_epochs_0_tests_an_official_fine_tuned_file_as_it_is(synth_dir, tmp_path):
    """VideoMAE's --eval: an official-layout fine-tuned file (un-prefixed encoder without a final
    norm, fc_norm, head) is tested through the command without training; its top-1 is the one
    Hugging Face's classifier with the same weights gives over the same test views."""
    from cmae.config import ConfigError
    from cmae.data.dataset import VideoDataset
    from cmae.data.lists import read_samples
    from cmae.data.views import MultiViewClips
    from cmae.engine.finetune import finetune

    torch.manual_seed(0)
    hf = transformers.VideoMAEForVideoClassification(transformers.VideoMAEConfig(
        **{**TINY_HF, "use_mean_pooling": True}, num_labels=8)).eval()
    randomize_biases(hf)
    state = {k.removeprefix("videomae."): v for k, v in hf.state_dict().items() if k.startswith("videomae.")}
    official = official_videomae_layout({**state, "layernorm.weight": torch.ones(48), "layernorm.bias": torch.zeros(48)},
                                        prefix="")
    del official["norm.weight"], official["norm.bias"]  # mean pooling: fc_norm instead of a final norm
    official.update({"fc_norm.weight": hf.fc_norm.weight, "fc_norm.bias": hf.fc_norm.bias,
                     "head.weight": hf.classifier.weight, "head.bias": hf.classifier.bias})
    torch.save({"module": official}, tmp_path / "finetuned.pth")
    data = [f"data.val={synth_dir / 'val.txt'}", *TINY_MODEL, *TINY_INPUT, "data.num_frames=4", "eval.batch_size=8",
            "eval.clips=2", "eval.crops=3", "finetune.epochs=0"]
    run = subprocess.run([sys.executable, "-m", "cmae.cli", "finetune", "--init", str(tmp_path / "finetuned.pth"),
                          "--config", "configs/demo/videomae.yaml", "--output", str(tmp_path / "test"), *data],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "classification head: 4 tensors" in run.stdout
    summary = json.loads((tmp_path / "test" / "summary.json").read_text())
    assert summary["num_train"] == 0 and summary["head_from_file"] and summary["num_val"] == 8
    config = load_config("configs/demo/videomae.yaml", data)
    views = VideoDataset(read_samples(config.data.val, config.data), MultiViewClips(config.data, 2, 3))
    hf.fc_norm.eps = 1e-6  # cmae's fc_norm eps, as the official code's
    hits = torch.zeros(2)  # top-1, top-5
    with torch.no_grad():
        for index in range(len(views)):
            item = views[index]
            scores = hf(item["video"].transpose(1, 2)).logits.softmax(-1).mean(0)  # 6 views of one video
            top5 = scores.topk(5).indices.tolist()
            hits += torch.tensor([top5[0] == int(item["label"]), int(item["label"]) in top5])
    assert [summary["top1"], summary["top5"]] == pytest.approx((100 * hits / len(views)).tolist())
    # the data's 8 classes: training starts from the file's head (an lr of 0 leaves it as it was)
    tuned = finetune(tmp_path / "finetuned.pth", tmp_path / "tuned", "configs/demo/videomae.yaml",
                     [*data, f"data.train={synth_dir / 'train.txt'}", "finetune.epochs=1", "finetune.batch_size=8",
                      "finetune.base_lr=0"])
    assert tuned["head_from_file"] and tuned["steps"] == 3
    model = torch.load(tmp_path / "tuned" / "checkpoint-last.pt", weights_only=True)["model"]
    assert torch.equal(model["classifier.head.weight"], hf.classifier.weight.detach())
    assert torch.equal(model["classifier.fc_norm.bias"], hf.fc_norm.bias.detach())
    with pytest.raises(ConfigError, match="tests a fine-tuned file's classifier, and .* has none"):
        torch.save({"model": official_videomae_layout(transformers.VideoMAEModel(
            transformers.VideoMAEConfig(**TINY_HF)).state_dict())}, tmp_path / "pretrained.pth")
        finetune(tmp_path / "pretrained.pth", tmp_path / "none", "configs/demo/videomae.yaml", data)

"""A cmae checkpoint's encoder in the layouts other libraries load, without importing them.

    cmae export --checkpoint RUN/checkpoint-last.pt --format hf --output DIR     # transformers VideoMAEModel
    cmae export --checkpoint RUN/checkpoint-last.pt --format timm --output DIR   # timm VisionTransformer

`hf` writes `config.json` and `model.safetensors` in the hub layout of the MCG-NJU/videomae-*
models (`q_bias` / `v_bias`, no key bias): `transformers.VideoMAEModel.from_pretrained(DIR)`.
Attention is unchanged by the dropped key bias: q.b_k adds the same constant to every logit
of a query, which softmax cancels. Hugging Face builds its position table from the config
(VideoMAE's 1D table), so only `model.pos_embed=videomae_1d` models without a class token are
written; others are refused, naming the key (export them to timm, or train with that table).

`timm` writes `model.safetensors` (timm's ViT names; the fixed position table written into
timm's `pos_embed` for `data.image_size`) and `config.json` in timm's own layout (`architecture`,
`model_args`, `pretrained_cfg`), for image encoders (`model.tubelet_size=1`) of any width and depth:
`timm.create_model("local-dir:DIR")`.

Both folders' config.json also carry a `cmae` entry (the model's config), so `cmae.load_encoder(DIR)`
reads them back.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cmae.config import Config, ConfigError
from cmae.engine.loading import load_pretrained
from cmae.engine.runtime import readable
from cmae.models.pos_embed import position_table
from cmae.models.vit import VIT_PRESETS, VisionTransformer, resample_table

FORMATS = ("hf", "timm")


def _encoder(checkpoint: str | Path) -> tuple[Config, VisionTransformer]:
    config, method = load_pretrained(checkpoint)
    if not isinstance(method.encoder, VisionTransformer):
        raise ConfigError(f"model.name={config.model.name!r}: only ViT encoders have an hf / timm layout")
    return config, method.encoder


def _save(tensors: dict[str, torch.Tensor], config: dict, output: Path, source: Config) -> Path:
    """model.safetensors and config.json, the latter with the cmae config of the model (`cmae.load_encoder`
    reads the folder back); files take the user's umask, like any other file they write."""
    from safetensors.torch import save_file

    output.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(output / "model.safetensors"))
    config["cmae"] = {"model": source.to_dict()["model"], "method": source.to_dict()["method"],
                      "data": {"image_size": source.data.image_size, "num_frames": source.data.num_frames,
                               "mean": source.data.mean, "std": source.data.std}}
    (output / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    readable(output / "model.safetensors")
    return output


def hf_videomae(checkpoint: str | Path, output: str | Path) -> Path:
    """The encoder as a Hugging Face `VideoMAEModel` folder (pre-training layout: final LayerNorm, no pooling)."""
    config, encoder = _encoder(checkpoint)
    if config.model.pos_embed not in ("videomae_1d", "joint"):
        raise ConfigError(f"model.pos_embed={config.model.pos_embed!r}: Hugging Face's VideoMAE computes VideoMAE's "
                          "1D table from its config and has no place for another; export to timm (images), or "
                          "pre-train with model.pos_embed=videomae_1d")
    if config.model.cls_token:
        raise ConfigError("model.cls_token=true: Hugging Face's VideoMAE has no class token")
    state = encoder.state_dict()
    width, side = encoder.embed_dim, config.data.image_size
    out = {"embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
    for i in range(encoder.depth):
        ours, theirs = f"blocks.{i}", f"encoder.layer.{i}"
        query, key, value = state[f"{ours}.attn.qkv.weight"].split(width)
        q_bias, _, v_bias = state[f"{ours}.attn.qkv.bias"].split(width)  # the key bias cancels in softmax
        out.update({f"{theirs}.attention.attention.query.weight": query,
                    f"{theirs}.attention.attention.key.weight": key,
                    f"{theirs}.attention.attention.value.weight": value,
                    f"{theirs}.attention.attention.q_bias": q_bias,
                    f"{theirs}.attention.attention.v_bias": v_bias})
        for name, hf_name in (("attn.proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"),
                              ("mlp.fc2", "output.dense"), ("norm1", "layernorm_before"), ("norm2", "layernorm_after")):
            for part in ("weight", "bias"):
                out[f"{theirs}.{hf_name}.{part}"] = state[f"{ours}.{name}.{part}"]
    hf_config = {
        "architectures": ["VideoMAEModel"], "model_type": "videomae",
        "image_size": config.data.image_size, "patch_size": encoder.patch_size, "num_channels": 3,
        "num_frames": config.data.num_frames, "tubelet_size": encoder.tubelet_size,
        "hidden_size": width, "num_hidden_layers": encoder.depth,
        "num_attention_heads": encoder.blocks[0].attn.num_heads,
        "intermediate_size": encoder.blocks[0].mlp.fc1.out_features, "hidden_act": "gelu",
        "layer_norm_eps": encoder.norm.eps, "qkv_bias": True, "qv_bias": True, "use_mean_pooling": False,
        "initializer_range": 0.02, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    }
    folder = _save(out, hf_config, Path(output), config)
    (folder / "preprocessor_config.json").write_text(json.dumps({  # VideoMAEImageProcessor.from_pretrained reads it
        "image_processor_type": "VideoMAEImageProcessor", "do_resize": True, "size": {"shortest_edge": side},
        "do_center_crop": True, "crop_size": {"height": side, "width": side}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": config.data.mean,
        "image_std": config.data.std, "resample": 2}, indent=2) + "\n")
    return folder


def timm_name(config: Config, encoder: VisionTransformer) -> str:
    """timm's architecture name for the encoder's size (vit_base_patch16_224 and the like); for a size
    timm has no name for, vit_base_patch16_224, whose builder takes the size from `model_args`."""
    preset = VIT_PRESETS[config.model.name]
    for name, size in VIT_PRESETS.items():
        if name.endswith(f"_patch{size.patch_size}") and (size.embed_dim, size.depth, size.num_heads,
                                                           size.mlp_ratio) == (preset.embed_dim, preset.depth,
                                                                               preset.num_heads, preset.mlp_ratio):
            return f"{name.rsplit('_patch', 1)[0]}_patch{encoder.patch_size}_224"
    return "vit_base_patch16_224"


def timm_vit(checkpoint: str | Path, output: str | Path) -> Path:
    """An image encoder as timm VisionTransformer weights plus the `create_model` call that takes them."""
    config, encoder = _encoder(checkpoint)
    if encoder.tubelet_size != 1:
        raise ConfigError(f"model.tubelet_size={encoder.tubelet_size}: timm's ViT takes images (tubelet 1)")
    side = config.data.image_size // encoder.patch_size
    if encoder.learned_pos_embed is not None:
        time = encoder.learned_time_pos_embed
        table = resample_table(encoder.learned_pos_embed.detach(), (1, side, side),
                               None if time is None else time.detach())[0]
    else:
        table = position_table(config.model.pos_embed, encoder.embed_dim, (1, side, side))
    if encoder.cls_token is not None:  # MAE's zero row, or a learned table's class-token code
        cls = torch.zeros(1, encoder.embed_dim) if encoder.cls_pos_embed is None else encoder.cls_pos_embed[0].detach()
        table = torch.cat([cls, table])
    state = encoder.state_dict()
    out = {k: v for k, v in state.items()
           if not k.startswith(("patch_embed.proj.weight", "learned_pos_embed", "cls_pos_embed"))}
    out["patch_embed.proj.weight"] = state["patch_embed.proj.weight"][:, :, 0]  # [D, C, 1, p, p] -> [D, C, p, p]
    out["pos_embed"] = table[None]
    size = VIT_PRESETS[config.model.name]
    model_args = {"img_size": config.data.image_size, "patch_size": encoder.patch_size, "embed_dim": size.embed_dim,
                  "depth": size.depth, "num_heads": size.num_heads, "mlp_ratio": size.mlp_ratio,
                  "class_token": encoder.cls_token is not None,
                  "global_pool": "token" if encoder.cls_token is not None else "avg", "fc_norm": False}
    # timm's own layout: timm.create_model("local-dir:DIR") builds `architecture` with `model_args`
    pretrained_cfg = {"input_size": [3, config.data.image_size, config.data.image_size], "mean": config.data.mean,
                      "std": config.data.std, "num_classes": 0, "crop_pct": config.data.test_crop_ratio}
    return _save(out, {"architecture": timm_name(config, encoder), "num_classes": 0, "num_features": size.embed_dim,
                       "model_args": model_args, "pretrained_cfg": pretrained_cfg,
                       "position_table": config.model.pos_embed}, Path(output), config)


def export(checkpoint: str | Path, format: str, output: str | Path) -> Path:
    if format == "hf":
        return hf_videomae(checkpoint, output)
    if format == "timm":
        return timm_vit(checkpoint, output)
    raise ConfigError(f"--format {format!r}: use one of {', '.join(FORMATS)}")

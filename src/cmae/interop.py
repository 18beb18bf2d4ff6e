"""Weights from other libraries' layouts into cmae's.

`videomae_from_hf` maps a Hugging Face `VideoMAEForPreTraining` state dict (the layout of
the MCG-NJU/videomae-* checkpoints, converted from the official code) onto cmae's `videomae`
method: encoder, encoder-to-decoder map, mask token and pixel decoder. The model that takes
it must use VideoMAE's positions (`model.pos_embed=joint`); the patch vectors of both are
flattened as (tubelet, patch, patch, channel), so the decoder head maps row for row.
"""

from __future__ import annotations

import re

import torch

# Per-block names: Hugging Face's -> cmae's (timm's). query/key/value are fused into qkv below.
_BLOCK_NAMES = {
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}


def _fuse_qkv(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """HF's separate query/key/value (key without bias) -> one qkv with a zero key bias."""
    names = ("query", "key", "value")
    weight = torch.cat([state[f"{prefix}.attention.attention.{n}.weight"] for n in names])
    query_bias = state.get(f"{prefix}.attention.attention.query.bias")
    if query_bias is None:  # qkv_bias=False checkpoints: cmae's qkv always has a bias
        query_bias = torch.zeros(weight.shape[1])
    value_bias = state.get(f"{prefix}.attention.attention.value.bias", torch.zeros_like(query_bias))
    return {"attn.qkv.weight": weight, "attn.qkv.bias": torch.cat([query_bias, torch.zeros_like(query_bias), value_bias])}


def _blocks(state: dict[str, torch.Tensor], hf_prefix: str, cmae_prefix: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    indices = sorted({int(m.group(1)) for key in state if (m := re.match(rf"{re.escape(hf_prefix)}\.(\d+)\.", key))})
    for i in indices:
        prefix = f"{hf_prefix}.{i}"
        out.update({f"{cmae_prefix}.{i}.{k}": v for k, v in _fuse_qkv(state, prefix).items()})
        for hf_name, name in _BLOCK_NAMES.items():
            for part in ("weight", "bias"):
                out[f"{cmae_prefix}.{i}.{name}.{part}"] = state[f"{prefix}.{hf_name}.{part}"]
    return out


def videomae_from_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`VideoMAEForPreTraining.state_dict()` -> the state dict of cmae's `videomae` method.

    Needs the encoder's final LayerNorm (`use_mean_pooling=False`, as in pre-training checkpoints).
    """
    if "videomae.layernorm.weight" not in state:
        raise KeyError("videomae.layernorm.weight is missing: a pre-training checkpoint (use_mean_pooling=False) "
                       "has the encoder's final norm that cmae's encoder applies")
    out = {
        "encoder.patch_embed.proj.weight": state["videomae.embeddings.patch_embeddings.projection.weight"],
        "encoder.patch_embed.proj.bias": state["videomae.embeddings.patch_embeddings.projection.bias"],
        "encoder.norm.weight": state["videomae.layernorm.weight"],
        "encoder.norm.bias": state["videomae.layernorm.bias"],
        **_blocks(state, "videomae.encoder.layer", "encoder.blocks"),
    }
    if "encoder_to_decoder.weight" in state:
        encoder_to_decoder = state["encoder_to_decoder.weight"]
        out.update({
            "decoder.decoder_embed.weight": encoder_to_decoder,
            "decoder.decoder_embed.bias": torch.zeros(encoder_to_decoder.shape[0]),  # VideoMAE's has none
            "decoder.mask_token": state["mask_token"],
            "decoder.decoder_norm.weight": state["decoder.norm.weight"],
            "decoder.decoder_norm.bias": state["decoder.norm.bias"],
            "decoder.decoder_pred.weight": state["decoder.head.weight"],
            "decoder.decoder_pred.bias": state["decoder.head.bias"],
            **_blocks(state, "decoder.decoder_layers", "decoder.decoder_blocks"),
        })
    return out

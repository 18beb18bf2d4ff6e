"""Weights from the field's checkpoints into cmae's layout: cmae, MAE / timm / ViC-MAE, the
official VideoMAE (v1, v2) and Hugging Face's VideoMAE.

    imported = import_weights("mae_pretrain_vit_base.pth")   # format, tensors in cmae's names, table
    report = load_imported(method, imported)                  # strict: every key loaded or named

Every key of a file is either mapped onto cmae's encoder (and pixel decoder, where the file
has a compatible one), kept as a fine-tuned file's classification head (`fc_norm`, `head`:
fine-tuning and its test-only mode use it), or dropped by a rule that the report names; any
other key is an error that names it. Files are read with
`torch.load(weights_only=True)`; MAE's and VideoMAE's training files also pickle their
`argparse.Namespace`, which is the one class allowed beyond tensors and containers.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cmae.models.pos_embed import position_table

FORMATS = {
    "cmae": "a cmae checkpoint",
    "timm": "MAE / timm / ViC-MAE ViT (2D patches, qkv, cls_token, fixed or learned pos_embed)",
    "videomae": "official VideoMAE v1/v2 (Conv3d tubelets, q_bias / v_bias, encoder. / decoder.)",
    "hf_videomae": "Hugging Face VideoMAE (VideoMAEModel / ForPreTraining / ForVideoClassification)",
    "mae_st": "MAE-ST (mae_st: separate q / k / v, learned space and time tables)",
}

# Keys a file may hold that cmae's encoder and decoder have no place for: dropped, and reported.
IGNORED = {
    "decoder position table": re.compile(r"^decoder_pos_embed$"),
}
# A fine-tuned file's classifier -> cmae's `Classifier` names (Hugging Face calls the head `classifier`)
HEAD_PREFIXES = {"fc_norm.": "fc_norm.", "head.": "head.", "classifier.": "head."}

# Per-block names: Hugging Face's -> cmae's (timm's). query/key/value are fused into qkv below.
_HF_BLOCK = {
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}
_BLOCK_PARTS = re.compile(r"^(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$")


class WeightsError(ValueError):
    """A weights file cmae cannot read or map; the message names the file and the key."""


@dataclass
class Imported:
    """A file's weights in cmae's names (`encoder.*`, `decoder.*`), and what it says about the model."""

    path: Path
    format: str
    weights: dict[str, torch.Tensor]
    pos_embed: str | None = None  # the position table the source used (None: a cmae checkpoint's config says)
    cls_token: bool = False
    ignored: dict[str, int] = field(default_factory=dict)  # rule -> keys dropped by it
    config: dict | None = None  # a cmae checkpoint's config
    pos_size: int | None = None  # a learned table's grid side
    pos_frames: int | None = None  # a learned temporal table's length (mae_st)
    notes: list[str] = field(default_factory=list)  # differences the report mentions
    head: dict[str, torch.Tensor] = field(default_factory=dict)  # a fine-tuned file's fc_norm.* and head.*
    folder_config: dict | None = None  # a folder's config.json (Hugging Face's; a cmae export's "cmae" entry)


def _torch_load(path: Path) -> object:
    """`torch.load(weights_only=True)`, allowing `argparse.Namespace` (MAE's and VideoMAE's `args`)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = found.group(1) if found else "objects other than tensors and containers"
        raise WeightsError(f"{path}: refusing to load: it pickles {what}, and unpickling it could run that "
                           "code (only tensors, containers and argparse.Namespace are read). Save the state "
                           "dict alone (torch.save(model.state_dict(), ...)) or as safetensors") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as error:  # text, truncated or not torch's
        raise WeightsError(f"{path}: not a weights file torch can read (is it truncated, or another kind of "
                           f"file?): {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None


def read_state(path: str | Path) -> tuple[dict, dict | None]:
    """(the file's top-level dict, a Hugging Face config.json or None). A folder is a Hugging Face
    `save_pretrained` folder; `.safetensors` files are read with safetensors."""
    path = Path(path)
    if path.is_dir():
        config_file = path / "config.json"
        hf_config = json.loads(config_file.read_text()) if config_file.is_file() else None
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return read_state(path / name)[0], hf_config
        raise WeightsError(f"{path}: a folder without model.safetensors or pytorch_model.bin")
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), None
    state = _torch_load(path)
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state, None


def _unwrap(state: dict) -> dict[str, torch.Tensor]:
    """The model's tensors in a training file: under `model` / `state_dict` / `module`, without DDP's `module.`."""
    for key in ("model", "state_dict", "module", "model_state"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    tensors = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError("no tensors found (looked at the top level and under model / state_dict / module)")
    return tensors


def detect_format(state: dict[str, torch.Tensor]) -> str:
    keys = set(state)
    if any("embeddings.patch_embeddings.projection.weight" in k for k in keys):
        return "hf_videomae"
    if any(k.endswith("attn.q_bias") for k in keys) or "encoder.patch_embed.proj.weight" in keys:
        return "videomae"
    if "pos_embed_spatial" in keys or any(k.endswith("attn.q.weight") for k in keys):
        return "mae_st"
    if "patch_embed.proj.weight" in keys:
        return "timm"
    raise WeightsError(f"unknown layout (first keys: {', '.join(sorted(keys)[:5])}); cmae reads "
                       + "; ".join(FORMATS.values()))


def _qkv_bias(width: int, q_bias: torch.Tensor | None, v_bias: torch.Tensor | None) -> torch.Tensor:
    """VideoMAE's and HF's q / v biases (no key bias; none at all without qkv_bias) -> cmae's qkv bias."""
    q_bias = torch.zeros(width) if q_bias is None else q_bias
    v_bias = torch.zeros(width) if v_bias is None else v_bias
    return torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])


class _Mapper:
    """Moves keys from `source` to `out`; whatever is left at the end is an error or an ignored rule."""

    def __init__(self, source: dict[str, torch.Tensor]):
        self.source, self.out, self.ignored, self.head = dict(source), {}, {}, {}

    def move(self, old: str, new: str, transform=None) -> bool:
        if old not in self.source:
            return False
        value = self.source.pop(old)
        self.out[new] = transform(value) if transform else value
        return True

    def blocks(self, old_prefix: str, new_prefix: str) -> None:
        """timm-named blocks (VideoMAE's with q_bias / v_bias) -> cmae's."""
        pattern = re.compile(rf"^{re.escape(old_prefix)}\.(\d+)\.(.+)$")
        for key in [k for k in self.source if pattern.match(k) and k.endswith(".attn.q.weight")]:  # mae_st
            attn = key.removesuffix(".q.weight")
            new = f"{new_prefix}.{pattern.match(key).group(1)}.attn.qkv"
            self.out[f"{new}.weight"] = torch.cat([self.source.pop(f"{attn}.{n}.weight") for n in "qkv"])
            if f"{attn}.q.bias" in self.source:
                self.out[f"{new}.bias"] = torch.cat([self.source.pop(f"{attn}.{n}.bias") for n in "qkv"])
        for key in [k for k in self.source if pattern.match(k)]:
            index, rest = pattern.match(key).groups()
            if rest in ("attn.q_bias", "attn.v_bias"):
                continue  # fused with qkv below
            if _BLOCK_PARTS.match(rest):
                self.move(key, f"{new_prefix}.{index}.{rest}")
        for weight_key in [k for k in self.out if k.startswith(f"{new_prefix}.") and k.endswith("attn.qkv.weight")]:
            index = weight_key.removeprefix(f"{new_prefix}.").split(".")[0]
            q_bias = self.source.pop(f"{old_prefix}.{index}.attn.q_bias", None)
            v_bias = self.source.pop(f"{old_prefix}.{index}.attn.v_bias", None)
            bias_key = weight_key.replace(".weight", ".bias")
            if bias_key not in self.out:  # VideoMAE's q / v biases, or none: cmae's qkv always has one
                self.out[bias_key] = _qkv_bias(self.out[weight_key].shape[0] // 3, q_bias, v_bias)

    def hf_blocks(self, old_prefix: str, new_prefix: str) -> None:
        indices = sorted({int(m.group(1)) for k in self.source if (m := re.match(rf"{re.escape(old_prefix)}\.(\d+)\.", k))})
        for i in indices:
            p = f"{old_prefix}.{i}"
            attention = [self.source.pop(f"{p}.attention.attention.{n}.weight") for n in ("query", "key", "value")]
            # transformers 5's modules name the biases query.bias / value.bias; saved files and transformers 4, q_bias
            q_bias = self.source.pop(f"{p}.attention.attention.query.bias", None)
            q_bias = self.source.pop(f"{p}.attention.attention.q_bias", q_bias)
            v_bias = self.source.pop(f"{p}.attention.attention.value.bias", None)
            v_bias = self.source.pop(f"{p}.attention.attention.v_bias", v_bias)
            self.out[f"{new_prefix}.{i}.attn.qkv.weight"] = torch.cat(attention)
            self.out[f"{new_prefix}.{i}.attn.qkv.bias"] = _qkv_bias(attention[0].shape[0], q_bias, v_bias)
            for hf_name, name in _HF_BLOCK.items():
                for part in ("weight", "bias"):
                    self.move(f"{p}.{hf_name}.{part}", f"{new_prefix}.{i}.{name}.{part}")

    def finish(self, path: Path) -> dict[str, int]:
        for old, new in HEAD_PREFIXES.items():
            for key in [k for k in self.source if k.startswith(old)]:
                self.head[new + key.removeprefix(old)] = self.source.pop(key)
        for rule, pattern in IGNORED.items():
            dropped = [k for k in self.source if pattern.match(k)]
            for key in dropped:
                self.source.pop(key)
            if dropped:
                self.ignored[rule] = len(dropped)
        if self.source:
            raise WeightsError(f"{path}: key {sorted(self.source)[0]!r} has no place in cmae's model "
                               f"({len(self.source)} such key(s): {', '.join(sorted(self.source)[:6])})")
        return self.ignored


def _timm(m: _Mapper, path: Path) -> tuple[str, bool, int | None]:
    """MAE / timm / ViC-MAE: 2D patch embedding, fused qkv, optional cls_token and pos_embed; MAE's
    pixel decoder (same names as cmae's) when present."""
    _move_encoder(m, "patch_embed.proj", "norm", lambda: m.blocks("blocks", "encoder.blocks"))
    cls_token = m.move("cls_token", "encoder.cls_token")
    table = m.source.pop("pos_embed", None)
    pos_embed, pos_size = "mae_2d", None
    if table is not None:
        width = table.shape[-1]
        prefix = table.shape[1] - round((table.shape[1] - cls_token) ** 0.5) ** 2  # class-token rows, 0 or 1
        patches = table.reshape(-1, width)[prefix:]
        side = round(patches.shape[0] ** 0.5)
        if side * side != patches.shape[0] or prefix not in (0, int(cls_token)):
            raise WeightsError(f"{path}: pos_embed {tuple(table.shape)} is not a square grid (plus a class token)")
        if not torch.allclose(patches.float(), position_table("mae_2d", width, (1, side, side)), atol=1e-4):
            pos_embed, pos_size = "learned", side  # timm's supervised ViTs: a trained table
            m.out["encoder.learned_pos_embed"] = patches[None]
            if prefix:
                m.out["encoder.cls_pos_embed"] = table[:, :1]
    m.move("mask_token", "decoder.mask_token")
    for name in ("decoder_embed", "decoder_norm", "decoder_pred"):
        for part in ("weight", "bias"):
            m.move(f"{name}.{part}", f"decoder.{name}.{part}")
    m.blocks("decoder_blocks", "decoder.decoder_blocks")
    return pos_embed, cls_token, pos_size


def _mae_st(m: _Mapper, path: Path) -> tuple[str, bool, int, int]:
    """mae_st (`sep_pos_embed`): Conv3d patches, q / k / v fused, learned spatial + temporal tables and
    the class token's. Its pixel decoder has learned tables cmae's lacks: dropped, and counted. A
    fine-tuned file normalises after pooling (`norm` then `head`): that norm is its classifier's fc_norm."""
    if "pos_embed" in m.source:
        raise WeightsError(f"{path}: mae_st's joint learned table (sep_pos_embed=False) has no cmae counterpart; "
                           "cmae reads mae_st files trained with sep_pos_embed")
    fine_tuned = "head.weight" in m.source
    # a fine-tuned file's `norm` follows the pooling: no per-token final norm to move
    _move_encoder(m, "patch_embed.proj", "<none>" if fine_tuned else "norm", lambda: m.blocks("blocks", "encoder.blocks"))
    cls_token = m.move("cls_token", "encoder.cls_token")
    m.move("pos_embed_spatial", "encoder.learned_pos_embed")
    m.move("pos_embed_temporal", "encoder.learned_time_pos_embed")
    m.move("pos_embed_class", "encoder.cls_pos_embed")
    if fine_tuned:  # mean of the patch tokens, then `norm`: cmae's mean-pooling classifier's fc_norm
        for part in ("weight", "bias"):
            m.head[f"fc_norm.{part}"] = m.source.pop(f"norm.{part}")
    decoder = [k for k in m.source if k.startswith(("decoder_", "mask_token"))]
    for key in decoder:
        m.source.pop(key)
    if decoder:
        m.ignored["mae_st's pixel decoder"] = len(decoder)
    side = round(m.out["encoder.learned_pos_embed"].shape[1] ** 0.5)
    return "learned", cls_token, side, m.out["encoder.learned_time_pos_embed"].shape[1]


def _videomae(m: _Mapper) -> tuple[str, bool, None]:
    """Official VideoMAE v1/v2: `encoder.`-prefixed pre-training files or un-prefixed fine-tuned ones."""
    prefix = "encoder." if "encoder.patch_embed.proj.weight" in m.source else ""
    _move_encoder(m, f"{prefix}patch_embed.proj", f"{prefix}norm", lambda: m.blocks(f"{prefix}blocks", "encoder.blocks"))
    _videomae_decoder(m, lambda: m.blocks("decoder.blocks", "decoder.decoder_blocks"))
    return "videomae_1d", False, None


def _hf_videomae(m: _Mapper) -> tuple[str, bool, None]:
    """Hugging Face's VideoMAE: `videomae.`-prefixed (ForPreTraining, ForVideoClassification) or not (VideoMAEModel)."""
    prefix = "videomae." if any(k.startswith("videomae.") for k in m.source) else ""
    _move_encoder(m, f"{prefix}embeddings.patch_embeddings.projection", f"{prefix}layernorm",
                  lambda: m.hf_blocks(f"{prefix}encoder.layer", "encoder.blocks"))
    _videomae_decoder(m, lambda: m.hf_blocks("decoder.decoder_layers", "decoder.decoder_blocks"))
    return "videomae_1d", False, None


def _move_encoder(m: _Mapper, patch: str, norm: str, move_blocks) -> None:
    """Patch embedding (a 2D one becomes a one-frame tubelet), blocks and final norm -> cmae's encoder."""
    m.move(f"{patch}.weight", "encoder.patch_embed.proj.weight", lambda w: w.unsqueeze(2) if w.ndim == 4 else w)
    m.move(f"{patch}.bias", "encoder.patch_embed.proj.bias")
    move_blocks()
    m.move(f"{norm}.weight", "encoder.norm.weight")
    m.move(f"{norm}.bias", "encoder.norm.bias")


def _videomae_decoder(m: _Mapper, move_blocks) -> None:
    """VideoMAE's pixel decoder (official and Hugging Face name it alike but for the blocks) -> cmae's."""
    if m.move("encoder_to_decoder.weight", "decoder.decoder_embed.weight"):  # VideoMAE's map has no bias
        m.out["decoder.decoder_embed.bias"] = torch.zeros(m.out["decoder.decoder_embed.weight"].shape[0])
    m.move("mask_token", "decoder.mask_token")
    move_blocks()
    for old, new in (("decoder.norm", "decoder.decoder_norm"), ("decoder.head", "decoder.decoder_pred")):
        for part in ("weight", "bias"):
            m.move(f"{old}.{part}", f"{new}.{part}")


def import_weights(path: str | Path) -> Imported:
    """Read `path` (any format in FORMATS) and map its tensors onto cmae's names."""
    path = Path(path)
    state, hf_config = read_state(path)
    if isinstance(state.get("config"), dict) and isinstance(state.get("model"), dict):
        return Imported(path, "cmae", state["model"], config=state["config"])
    try:
        tensors = _unwrap(state)
        kind = detect_format(tensors)
    except WeightsError as error:
        raise WeightsError(f"{path}: {error}") from None
    mapper, pos_frames = _Mapper(tensors), None
    if kind == "timm":
        pos_embed, cls_token, pos_size = _timm(mapper, path)
    elif kind == "mae_st":
        pos_embed, cls_token, pos_size, pos_frames = _mae_st(mapper, path)
    elif kind == "videomae":
        pos_embed, cls_token, pos_size = _videomae(mapper)
    else:
        pos_embed, cls_token, pos_size = _hf_videomae(mapper)
    ignored = mapper.finish(path)
    # The architecture comes from cmae's config (shapes are checked on load); what a shape cannot show:
    notes = []
    eps = (hf_config or {}).get("layer_norm_eps", 1e-6)
    if eps != 1e-6:
        notes.append(f"its config's layer_norm_eps is {eps:g}, cmae's 1e-6: outputs differ by about 1e-6 relative")
    return Imported(path, kind, mapper.out, pos_embed, cls_token, ignored, pos_size=pos_size, pos_frames=pos_frames,
                    notes=notes, head=mapper.head, folder_config=hf_config)


def load_imported(method: torch.nn.Module, imported: Imported) -> str:
    """Load the encoder strictly (every tensor of cmae's encoder from the file, shapes equal) and the
    pixel decoder when the file has one that fits the method's; -> a one-line report per part."""
    encoder = {k.removeprefix("encoder."): v for k, v in imported.weights.items() if k.startswith("encoder.")}
    decoder = {k.removeprefix("decoder."): v for k, v in imported.weights.items() if k.startswith("decoder.")}
    final_norm = "norm.weight" in encoder
    if not final_norm:  # a fine-tuned file with mean pooling: fc_norm took the place of the final norm
        encoder.update({k: v for k, v in method.encoder.state_dict().items() if k.startswith("norm.")})
    _load_strict(method.encoder, encoder, imported.path, "encoder")
    table = imported.pos_embed or (imported.config or {}).get("model", {}).get("pos_embed")
    lines = [f"loaded {imported.path} ({FORMATS[imported.format]}): encoder {len(encoder)} tensors, "
             f"position table {table}"]
    if not final_norm:
        lines.append("  the file has no final norm (a fine-tuned, mean-pooling layout): the encoder's stays at its "
                     "initialisation; fine-tuning with mean pooling skips it, frozen features pass through it")
    # a cmae checkpoint's other parts (heads, EMA target): taken where this method has the same tensor
    rest = {k: v for k, v in imported.weights.items() if not k.startswith(("encoder.", "decoder."))}
    own = method.state_dict()
    fitting = {k: v for k, v in rest.items() if k in own and own[k].shape == v.shape}
    if fitting:
        method.load_state_dict(fitting, strict=False)
        lines.append(f"  other parts of the source method: {len(fitting)} tensors")
    if len(rest) > len(fitting):
        lines.append(f"  not loaded, parts this method lacks or shapes differently: {len(rest) - len(fitting)} tensors")
    target = getattr(method, "decoder", None)
    if decoder:
        own = target.state_dict() if target is not None else {}
        if own.keys() == decoder.keys() and all(own[k].shape == v.shape for k, v in decoder.items()):
            target.load_state_dict(decoder)
            lines.append(f"  pixel decoder: {len(decoder)} tensors")
        else:
            lines.append(f"  pixel decoder: {len(decoder)} tensors not loaded (this model's decoder differs "
                         "in shape or has none); it starts from its initialisation")
    if imported.head:
        classes = imported.head["head.weight"].shape[0] if "head.weight" in imported.head else "?"
        lines.append(f"  classification head: {len(imported.head)} tensors ({classes} classes), for `cmae finetune` "
                     "when its data has as many classes (finetune.epochs=0 tests the file as it is)")
    lines += [f"  not loaded, {rule}: {count} tensors" for rule, count in imported.ignored.items()]
    lines += [f"  note: {note}" for note in imported.notes]
    return "\n".join(lines)


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, part: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightsError(f"{path}: the {part} does not match the configured model: missing "
                           f"{missing[:4] or 'none'}, unexpected {unexpected[:4] or 'none'} (set model.* to "
                           "the file's architecture)")
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise WeightsError(f"{path}: {part}.{key} has shape {tuple(value.shape)} in the file and "
                               f"{tuple(own[key].shape)} in the configured model (set model.* to match)")
    module.load_state_dict(state)


def videomae_from_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`VideoMAEForPreTraining.state_dict()` -> the state dict of cmae's `videomae` method."""
    mapper = _Mapper(state)
    _hf_videomae(mapper)
    mapper.finish(Path("<state dict>"))
    return mapper.out

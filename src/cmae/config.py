"""Typed run configuration: defaults here, YAML presets on top, `key=value` overrides last.

Every key lives in one of the dataclasses below, so a typo (`trian.epochs`) or a value of
the wrong type (`train.epochs=two`) is rejected before any work starts, with the key
named. The resolved config is written to each run's `config.yaml`.

The bottom floor of the package, with its siblings: `cmae.config_schema` types the values of
YAML presets and overrides, `cmae.config_rules` holds the range rules, `cmae.errors` the errors.
None of them imports anything else of cmae: the checks that need the method registry are
`resolve_method`'s, in the methods package a floor above.

docs/configuration.md is generated from this file (`python scripts/config_reference.py`): the
comments above and beside each field are its documentation.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cmae.config_rules import check_ranges
from cmae.config_schema import apply_values, parse_override, read_preset, reject_expanded_braces
from cmae.errors import ConfigError, InputError, reject_choice

# names that modules and users import from here (the errors and the preset reading live next door)
__all__ = [
    "Config", "ConfigError", "DataConfig", "EvalConfig", "FinetuneConfig", "IMAGENET_MEAN", "IMAGENET_STD",
    "InputError", "MethodConfig", "ModelConfig", "ScheduleConfig", "TrainConfig", "config_from_dict",
    "load_config", "parse_override", "read_preset", "reject_choice", "save_config", "set_key", "validate",
]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class DataConfig:
    # a list file, an ImageFolder directory, or (data.train of pretrain) tar shards DIR/shard-{000000..000099}.tar
    train: str = ""
    val: str = ""
    # auto | path_label (`path label`, VideoMAE/mmaction) | videomae_v2 (`path 0 -1`, unlabelled) |
    # rawframes (`frame_dir total_frames label`) | csv (a header naming path[,label][,total_frames])
    list_format: Literal["auto", "path_label", "videomae_v2", "rawframes", "csv"] = "auto"
    frame_template: str = "img_{:05d}.jpg"  # rawframes: a frame's file name from its number (mmaction's)
    frame_start: int = 1  # rawframes: the number of the first frame file (mmaction counts from 1)
    shuffle_buffer: int = 100  # tar shards: samples (still encoded) each loader worker shuffles among
    num_frames: int = 16  # frames per clip fed to the encoder (1 for image MAE)
    sampling_rate: int = 4  # stride between sampled frames
    # dense: num_frames frames at sampling_rate from a random start (VideoMAE on Kinetics); segment: the video cut
    # into num_frames equal segments, a frame from each (TSN's; VideoMAE's fine-tuning on SSv2), sampling_rate unused
    temporal_sampling: Literal["dense", "segment"] = "dense"
    image_size: int = 224
    # how a sample becomes the method's inputs (data/views.py); auto: the method's own sampler
    views: Literal["auto", "clip", "temporal_shift", "frame_pair"] = "auto"
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])  # random resized crop area range
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: bool = True
    # test views resize the short side to image_size / test_crop_ratio, then crop image_size:
    # 1 for the video test (VideoMAE), 0.875 for MAE's ImageNet test (256 -> 224)
    test_crop_ratio: float = 1.0
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    decoder: Literal["auto", "torchcodec", "pyav"] = "auto"
    num_workers: int = 2
    prefetch_factor: int = 2  # batches each worker loads ahead (with num_workers > 0)
    # draw this many samples from each video in one decoding pass, each with its own temporal position,
    # augmentation and mask (mae_st's repeat_aug, VideoMAE V2's num_sample); an epoch holds repeat x videos
    repeat: int = 1
    decode_device: Literal["cpu", "cuda"] = "cpu"  # cuda: torchcodec's NVDEC decoding (needs torchcodec and a GPU)
    cache_decoded: bool = False  # keep every decoded training video in memory (small sets of short clips)
    max_failed_fraction: float = 0.05  # stop the run when more of the decoded files than this are corrupt
    # views=temporal_shift (CMAE-V): target clip = online clip shifted by delta ~ U{0..max_shift} frames
    max_shift: int = 4
    pixel_shift: int = 0  # max offset in pixels of the target's crop (CMAE's pixel shift: 31); 0 = same crop
    target_color: bool = True  # colour jitter / grayscale / blur on the target clip only
    # views=frame_pair (ViC-MAE and the MAE+SimSiam / MAE+VICReg baselines)
    # distant (one frame from each half) | continuous (second frame in (i, i+gap])
    pair_sampling: Literal["distant", "continuous"] = "distant"
    frame_gap: int = 4  # continuous sampling's delta; 0 gives the same frame twice
    video_color: bool = False  # the strong colour recipe on video frames too (ViC-MAE appendix B.2)
    solarize: bool = False  # solarisation on an image's second view (the released code)
    train_images: str = ""  # ImageFolder tree or image list mixed into data.train (joint image + video)
    image_ratio: float = 0.0  # fraction of each epoch's samples drawn from train_images; 0 keeps both as they are


@dataclass
class ModelConfig:
    name: str = "vit_base"  # a preset of VIT_PRESETS (models/vit.py) or CONVVIT_PRESETS (models/convvit.py)
    patch_size: int = 0  # 0: the preset's
    tubelet_size: int = 2  # frames per token; 1 for images
    drop_path: float = 0.0
    cls_token: bool = False
    # fixed sin-cos positions: separable (space x time tables) | mae_2d (MAE's 2D table, every frame alike) |
    # videomae_1d (VideoMAE's 1D table over t*h*w; `joint` is its earlier name). Imported weights set theirs.
    # learned: a trained 2D table of pos_size x pos_size places (timm's supervised ViTs), resampled to the grid
    pos_embed: Literal["separable", "mae_2d", "videomae_1d", "joint", "learned"] = "separable"
    pos_size: int = 14  # pos_embed=learned: the side of the table's grid (224 / 16)
    pos_frames: int = 0  # pos_embed=learned: token time steps of a temporal table added to it (mae_st); 0: none
    # the encoder's linear layers and patch projection: normal = N(0, 0.02) at every width (Hugging Face's
    # VideoMAE, BEiT) | xavier (MAE's and VideoMAE's code: larger draws at small widths, which learn less)
    init: Literal["xavier", "normal"] = "normal"
    decoder_init: Literal["xavier", "normal"] = "xavier"  # the pixel decoder's: MAE, VideoMAE | Hugging Face (docs: results)
    decoder_dim: int = 384
    decoder_depth: int = 4
    decoder_heads: int = 6


@dataclass
class MethodConfig:
    name: str = "videomae"  # a method of the registry METHODS (methods/__init__.py)
    masking: Literal["auto", "tube", "random"] = "auto"  # auto: the method's own (tube for video methods)
    mask_ratio: float = 0.9
    # VideoMAE V2's dual masking: the decoder sees the visible tokens and a random (1 - this) share of
    # the masked ones, and the loss covers that share only; 0 = every token (VideoMAE, MAE)
    decoder_mask_ratio: float = 0.0
    norm_pix: Literal["channel", "patch", "none"] = "channel"  # channel (VideoMAE) | patch (MAE)
    # contrastive branch (cmae_v)
    # online feature: decoder (mean of all pixel-decoder states) | encoder (visible tokens) |
    # feature_decoder (CMAE's code: a separate small decoder, own mask token and positions, mean of all its states)
    feature: Literal["decoder", "encoder", "feature_decoder"] = "decoder"
    feature_decoder_depth: int = 2  # feature=feature_decoder: its blocks (CMAE's code: 2)
    feature_decoder_dim: int = 0  # feature=feature_decoder: its width; 0 = the encoder's
    target_norm: bool = True  # cmae_v: false skips the target encoder's final norm (CMAE's code: final_norm=False)
    proj_hidden: int = 1536
    proj_dim: int = 256
    pred_hidden: int = 1536
    predictor: bool = True  # cmae_v: false drops the online predictor (query = projector output), an ablation
    temperature: float = 0.07
    # lambda_c in L = L_rec + lambda_c * L_con: a number, or grad_ratio: lambda_c is re-measured on logging steps
    # so that |lambda_c * grad L_con| = con_grad_ratio * |grad L_rec| on the shared encoder (docs: methods)
    con_weight: float | Literal["grad_ratio"] = 1.0
    con_grad_ratio: float = 0.3  # con_weight=grad_ratio: the target ratio of the two gradient norms (demo's choice)
    con_balance_smoothing: float = 0.9  # con_weight=grad_ratio: EMA of lambda_c over measurements (0: the last)
    con_scale_2tau: bool = False  # multiply InfoNCE by 2*tau, as CMAE's code does
    momentum: float = 0.996  # EMA rate of the target encoder and projector
    momentum_schedule: Literal["constant", "cosine"] = "constant"  # (from `momentum` to 1.0 over the run)
    # BatchNorm in projector/predictor heads: statistics over the global batch under torchrun
    # (SyncBN, as MoCo v3 and CMAE's code); false: per rank
    global_bn: bool = True
    # two-view methods (vic_mae, mae_simsiam, mae_vicreg)
    pooling: Literal["mean", "max", "gem"] = "mean"  # vic_mae's token pooling (gem: learnable p)
    # vic_mae: paper (D -> 2D, 2D, 2D; appendix A) | released (the authors' code: D -> 4096 -> 4096 -> 128)
    projector: Literal["paper", "released"] = "paper"
    # vic_mae: eq3 (NT-Xent over 2N, mean) | algorithm1 (two cross-view directions, summed)
    contrast: Literal["eq3", "algorithm1"] = "eq3"
    rec_views: Literal["both", "first"] = "both"  # reconstruct both views (averaged) | first (Algorithm 1)
    con_start_epoch: float = 0.0  # lambda is 0 before this epoch, then con_weight (ViC-MAE: 200 of 800)
    vicreg_weights: list[float] = field(default_factory=lambda: [25.0, 25.0, 1.0])  # invariance, variance, covariance


@dataclass
class ScheduleConfig:
    """AdamW and its schedule: the part of pre-training's `train` that fine-tuning's `finetune`
    has too (with its own defaults)."""

    epochs: int = 800
    batch_size: int = 1024  # global batch over all processes and accumulation steps
    base_lr: float = 1.5e-4  # lr = base_lr * batch_size / 256 (unless train.lr > 0)
    min_lr: float = 0.0
    warmup_epochs: float = 40.0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    clip_grad: float = 0.0  # max gradient norm; 0 disables clipping
    accum_steps: int = 1  # micro-batches per optimiser step, each batch_size / (processes x accum_steps) (--update_freq)
    warmup_lr: float = 0.0  # the lr the linear warm-up starts from (VideoMAE's --warmup_lr)
    # a cosine from weight_decay to this over the run, on the decayed groups (VideoMAE's --weight_decay_end);
    # unset: constant
    weight_decay_end: float | None = None


@dataclass
class MonitorConfig:
    """A cheap frozen evaluation during pre-training (`train.monitor`), logged as `monitor_top1`."""

    every_epochs: int = 0  # 0: off
    train: str = ""  # a small labelled list (or ImageFolder) the kNN / probe learns from
    val: str = ""  # the one it is scored on
    protocol: Literal["knn", "linprobe"] = "knn"


@dataclass
class TrainConfig(ScheduleConfig):
    lr: float = 0.0  # > 0: this lr, whatever the batch
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    log_every: int = 10  # steps between metrics.jsonl lines
    # on logging steps, also each loss term's gradient norm on the shared encoder (grad_norm_<term>): one more
    # backward per term on those steps
    log_term_grads: bool = False
    save_every: int = 1  # epochs between checkpoint-last.pt writes (the last epoch is always saved)
    keep_every: int = 0  # also keep checkpoint-NNNN.pt every this many epochs; 0: only the last
    save_every_steps: int = 0  # also write checkpoint-last.pt every this many steps, mid-epoch (0: epoch ends only)
    keep_checkpoints: int = 0  # also keep the last N checkpoints written, as checkpoint-stepNNNNNNN.pt
    tensorboard: bool = True  # TensorBoard event files next to metrics.jsonl (the same scalars)
    # append `epoch step index...` lines (the samples of each step) to RUN/samples-rank{r}.txt: audits of
    # data order, shard coverage and resume
    log_samples: bool = False
    max_steps_per_epoch: int = 0  # 0: the whole data set each epoch (a cap is for smoke runs)
    compile: bool = False  # torch.compile the method's forward (checkpoints keep plain parameter names)
    grad_checkpointing: bool = False  # recompute each transformer block in backward: less memory, ~1/3 more compute
    strategy: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate (DDP) or shard (FSDP2's fully_shard)
    # with accum_steps > 1, contrastive terms (negatives, head BatchNorm) over the whole global batch by gradient
    # caching (a second forward pass per micro-batch) | over each micro-batch (warns)
    contrastive_accumulation: Literal["exact", "micro"] = "micro"
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


@dataclass
class EvalConfig:
    """Linear probe, kNN and shared evaluation settings (MAE / ViC-MAE Table 7 defaults)."""

    feature: Literal["mean", "temporal", "cls"] = "mean"  # mean of patch tokens | temporal (per-time-step means) | cls
    clips: int = 1  # temporal clips per video at test time (K400 5, SSv2 2, ViC-MAE K400 7)
    crops: int = 1  # spatial crops per clip at test time (papers: 3)
    label_fraction: float = 1.0  # train on a seeded, class-balanced fraction of the labels
    fraction_seed: int = 0
    batch_size: int = 64  # feature extraction batch
    cache: bool = True  # keep extracted features next to the checkpoint (features/) for reuse
    probe_epochs: int = 90
    probe_batch_size: int = 4096
    probe_base_lr: float = 0.1  # lr = probe_base_lr x probe_batch_size / 256 (SGD, momentum 0.9)
    probe_warmup_epochs: float = 10.0
    probe_weight_decay: float = 0.0
    knn_k: int = 20
    knn_temperature: float = 0.07
    # kNN feature normalisation with training-set statistics: none | batchnorm (centre, unit variance per
    # dimension, the linear probe's BatchNorm) | whiten (centre, then PCA-whiten): MAE-type features are
    # dominated by a few large directions that swamp the cosine
    knn_normalize: Literal["none", "batchnorm", "whiten"] = "none"
    # attentive probe (`cmae attnprobe`, V-JEPA's): learned queries cross-attend over the frozen token grid,
    # depth - 1 self-attention blocks over the queries, a linear classifier; AdamW, cosine with warm-up
    attn_queries: int = 1
    attn_depth: int = 1  # V-JEPA 1: 1; V-JEPA 2: 4 (with 16 heads)
    attn_heads: int = 4
    attn_epochs: int = 20
    attn_batch_size: int = 64
    attn_lr: float = 1e-3
    attn_weight_decay: float = 0.01
    # many probe settings in one pass: [[lr, ...], [weight_decay, ...]], every pair trained together on the same
    # features (lr: probe_base_lr for linprobe, attn_lr for attnprobe); [] trains the one setting above
    probe_grid: list[list[float]] = field(default_factory=list)
    # hold out this class-balanced fraction of the training set to choose the grid's winner (and fine-tuning's
    # best epoch); only the winner is scored on data.val. 0: no selection split (a grid then needs one)
    select_fraction: float = 0.0
    # train the probes on features of augmented training clips (the pre-training crop and flip), computed anew
    # each epoch as V-JEPA does, instead of cached test views: an encoder pass per probe epoch
    probe_augment: bool = False


@dataclass
class FinetuneConfig(ScheduleConfig):
    """End-to-end fine-tuning (ViC-MAE Table 6, VideoMAE's recipe for video): the schedule's
    fine-tuning defaults, then what only fine-tuning has."""

    epochs: int = 100  # 0: no training, the test of a fine-tuned file's classifier (VideoMAE's --eval)
    # global batch over all processes and accumulation steps; 0: the pre-training preset's train.batch_size
    # (a paper's 1024 would be a single, near-full-batch step on a small data set)
    batch_size: int = 0
    base_lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_epochs: float = 5.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    layer_decay: float = 0.65  # 0.75 for ViT-L
    drop_path: float = 0.1
    mixup: float = 0.8  # mixup alpha; 0 disables
    cutmix: float = 1.0  # cutmix alpha; 0 disables
    label_smoothing: float = 0.1
    randaug_n: int = 2  # RandAugment ops per sample (0 disables)
    # magnitude on timm's 0-10 scale; ViC-MAE's (9, 0.5) = m9 (its 0.5 std jitter is not modelled)
    randaug_m: int = 9
    # random erasing (VideoMAE's --reprob 0.25): a clip loses one random box, the same in every frame, to noise
    reprob: float = 0.0
    # mean pooling: false skips the encoder's final norm before fc_norm (MAE's, VideoMAE's, timm's layout);
    # true keeps it (cmae's layout until then)
    encoder_norm: bool = False
    head_dropout: float = 0.0  # dropout between the pooled feature and the head (VideoMAE's --fc_drop_rate; UCF101: 0.5)
    # every this many epochs a single-view validation (on the selection split when eval.select_fraction is set,
    # else on data.val as the official scripts do); the best epoch is kept as checkpoint-best.pt. 0: off
    eval_every: int = 0
    # an exponential moving average of the classifier, tested beside it at the end (VideoMAE's --model_ema)
    model_ema: bool = False
    model_ema_decay: float = 0.9999
    attn_drop_rate: float = 0.0  # dropout on the encoder's attention weights (VideoMAE's --attn_drop_rate)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate(config: Config) -> Config:
    """Raise ConfigError naming the first key whose value is out of its range (`RULES`), or keys
    that do not go together. What needs the method registry (a known `method.name`, `data.views`
    that fits it, `auto` resolved) is the methods' `resolve_method`'s, which the runs call next."""
    check_ranges(config)
    measures_grads = config.train.log_term_grads or config.method.con_weight == "grad_ratio"
    if config.train.strategy == "fsdp" and measures_grads:
        raise ConfigError("train.log_term_grads and method.con_weight=grad_ratio measure gradients on the whole "
                          "encoder, which train.strategy=fsdp shards: use ddp")
    monitor = config.train.monitor
    if monitor.every_epochs and not (monitor.train and monitor.val):
        raise ConfigError("train.monitor.every_epochs needs train.monitor.train and train.monitor.val (labelled lists)")
    grid = config.eval.probe_grid
    if grid and (len(grid) != 2 or not all(grid)):
        raise ConfigError(f"eval.probe_grid must be [[lr, ...], [weight_decay, ...]], got {grid}")
    if grid and len(grid[0]) * len(grid[1]) > 1 and config.eval.select_fraction == 0:
        raise ConfigError("eval.probe_grid has several settings: set eval.select_fraction (e.g. 0.2) to choose "
                          "the winner on held-out training samples, never on data.val")
    return config


def set_key(config: Config, dotted: str, value: Any) -> None:
    """Set one dotted key (`train.epochs`), checked against the schema."""
    *parents, leaf = dotted.split(".")
    nested: dict[str, Any] = {leaf: value}
    for parent in reversed(parents):
        nested = {parent: nested}
    apply_values(config, nested, "")


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults <- YAML file at `path` (after its bases) <- `key=value` overrides, all checked against the
    schema and `validate`d; a run then calls the methods' `resolve_method` for what needs the registry."""
    config = Config()
    for preset, values in read_preset(path) if path is not None else []:
        try:
            apply_values(config, values, "")
        except ConfigError as error:
            raise ConfigError(f"{preset}: {error}") from None
    parsed = [parse_override(text) for text in overrides]
    reject_expanded_braces(parsed)
    for key, value in parsed:
        set_key(config, key, value)
    return validate(config)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a Config from `to_dict()` output (e.g. the one stored in a checkpoint). Types are
    checked, ranges are not: a stored config stays loadable; callers validate what they run."""
    config = Config()
    apply_values(config, values, "")
    return config


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

"""End-to-end fine-tuning: pre-trained encoder + linear head, trained by the shared loop.

Recipe knobs (ViC-MAE Table 6; VideoMAE for video): layer-wise lr decay, drop path,
mixup / cutmix, label smoothing, RandAugment, AdamW (0.9, 0.999), weight decay 0.05,
cosine with warmup; a seeded class-balanced label fraction (`eval.label_fraction`);
multi-view testing (`eval.clips` x `eval.crops`, softmax averaged) at the end. A fine-tuned
foreign file's classifier (official VideoMAE, Hugging Face, timm) is kept when the classes match;
`finetune.epochs=0` only tests it (VideoMAE's --eval).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from cmae.config import Config, ConfigError, ScheduleConfig, TrainConfig
from cmae.data.dataset import VideoDataset, decoded_items
from cmae.data.lists import read_samples
from cmae.data.views import ClipView, MultiViewClips
from cmae.distributed import all_reduce_sum, cleanup, init_distributed, rank_and_world
from cmae.engine.evaluate import (
    balanced_fraction,
    check_decode_failures,
    check_evaluation_data,
    topk_accuracy,
    write_summary,
)
from cmae.engine.loading import load_with_head
from cmae.engine.loop import BEST_NAME, Job, train_loop
from cmae.engine.runtime import read_metrics, resolve_device
from cmae.engine.schedule import no_weight_decay
from cmae.methods.base import Method, MethodOutput
from cmae.models import build_encoder
from cmae.models.pooling import pool_tokens


class Classifier(nn.Module):
    """clip `[B, C, T, H, W]` -> logits `[B, K]`: encoder, pooled feature, linear head.

    Mean pooling follows MAE's, VideoMAE's and timm's layout: the encoder's final norm is
    skipped and the mean of the patch tokens goes through `fc_norm` (`encoder_norm=True` keeps the
    final norm before `fc_norm`, cmae's layout before, for its older fine-tuned models). The class
    token keeps the final norm and has no `fc_norm`.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, feature: str = "mean", encoder_norm: bool = False,
                 head_dropout: float = 0.0):
        super().__init__()
        if feature == "mean" and not encoder_norm:
            encoder.norm = nn.Identity()
        self.encoder, self.feature = encoder, feature
        self.fc_norm = nn.LayerNorm(encoder.embed_dim, eps=1e-6) if feature == "mean" else nn.Identity()
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE: a near-zero head keeps early updates small
        nn.init.zeros_(self.head.bias)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.fc_norm(pool_tokens(self.encoder, self.encoder(clip), self.feature))))


def layer_decay_groups(model: Classifier, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups with lr_scale = layer_decay ** (L + 1 - layer): the head and final norms
    (layer L + 1) at full rate, block i at decay^(L - i), the embedding at decay^(L + 1);
    no weight decay on norms, biases, tokens and position embeddings."""
    top = model.encoder.depth + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = model.encoder.layer_id(name[len("encoder."):]) if name.startswith("encoder.") else top
        decayed = not no_weight_decay(name, param)
        group = groups.setdefault((layer, decayed), {
            "params": [], "weight_decay": weight_decay if decayed else 0.0, "lr_scale": layer_decay ** (top - layer),
        })
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


class FinetuneObjective(Method):
    """The classifier as a method for the training loop: mixup/cutmix, label smoothing, soft CE."""

    name = "finetune"

    def __init__(self, classifier: Classifier, num_classes: int, mixup: float, cutmix: float, smoothing: float,
                 ema_decay: float | None = None):
        super().__init__()
        self.classifier, self.num_classes, self.smoothing = classifier, num_classes, smoothing
        # the EMA is a frozen submodule, so the checkpoint saves it and --resume restores it with the model
        self.ema = copy.deepcopy(classifier).requires_grad_(False).eval() if ema_decay is not None else None
        self.ema_decay = ema_decay
        mixers = ([v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup > 0 else []) + \
                 ([v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix > 0 else [])
        self.mix = v2.RandomChoice(mixers) if mixers else None  # timm: one of the two per batch, p = 0.5

    def soft_targets(self, clip: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed clips `[B, C, T, H, W]` and smoothed soft targets `[B, K]` (mixing and smoothing commute)."""
        if self.mix is None:
            target = F.one_hot(labels, self.num_classes).float()
        else:  # torchvision mixes Video batches laid out [B, T, C, H, W]; the cut box is shared by all frames
            video, target = self.mix(tv_tensors.Video(clip.transpose(1, 2)), labels)
            clip = video.as_subclass(torch.Tensor).transpose(1, 2)
        return clip, target * (1 - self.smoothing) + self.smoothing / self.num_classes

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """ema <- decay x ema + (1 - decay) x weights, after every optimiser step (timm's ModelEmaV2); buffers copied."""
        if self.ema is None:
            return
        for ema, live in zip(self.ema.state_dict().values(), self.classifier.state_dict().values(), strict=True):
            if ema.dtype.is_floating_point:
                ema.lerp_(live, 1.0 - self.ema_decay)
            else:
                ema.copy_(live)

    def forward(self, batch: dict[str, torch.Tensor]) -> MethodOutput:
        clip, target = self.soft_targets(batch["video"], batch["label"])
        loss = torch.sum(-target * F.log_softmax(self.classifier(clip).float(), dim=-1), dim=-1).mean()
        return MethodOutput(loss, {"loss_cls": loss.detach()})


@torch.no_grad()
def multiview_accuracy(classifier: Classifier, dataset, config: Config, device: torch.device) -> dict[str, float]:
    """Top-1/top-5 with softmax averaged over each video's V views, summed over ranks.
    Undecodable files are left out and counted (`skipped_val`), and stop the test past
    data.max_failed_fraction, as in `extract_features`."""
    classifier.eval()
    rank, world = rank_and_world()
    indices = list(range(rank, len(dataset), world))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=config.eval.batch_size,
                        num_workers=config.data.num_workers)
    totals = torch.zeros(3, dtype=torch.float64)  # top-1 hits, top-5 hits, videos scored
    for batch in loader:
        decoded = decoded_items(batch)
        clips = batch["video"][decoded].to(device)  # [B, V, C, T, H, W]
        if len(clips) == 0:
            continue
        probs = classifier(clips.flatten(0, 1)).float().softmax(-1).reshape(*clips.shape[:2], -1).mean(1)
        accuracy = topk_accuracy(probs.cpu(), batch["label"][decoded])
        totals += torch.tensor([accuracy["top1"] / 100, accuracy["top5"] / 100, 1.0], dtype=torch.float64) * len(probs)
    top1, top5, scored = all_reduce_sum(totals).tolist()
    check_decode_failures(len(dataset) - int(scored), len(dataset), config.data.max_failed_fraction)
    return {"top1": 100.0 * top1 / scored, "top5": 100.0 * top5 / scored, "skipped_val": len(dataset) - int(scored)}


def finetune_train_config(config: Config) -> TrainConfig:
    """The `finetune` section as the loop's TrainConfig: its schedule fields, the rest (device,
    seed, precision, logging) from `train`. Fine-tuning replicates the model (DDP) whatever
    `train.strategy` says: its test pass runs the classifier outside the sharded forward."""
    schedule = {f.name: getattr(config.finetune, f.name) for f in dataclasses.fields(ScheduleConfig)}
    schedule["betas"] = list(schedule["betas"])  # a copy: the loop must not alias the config's list
    return dataclasses.replace(
        config.train, **schedule, lr=0.0,
        keep_every=0, max_steps_per_epoch=0,  # a pre-training smoke run's cap is not inherited
        strategy="ddp",
    )


def finetune(checkpoint: str | Path, output: str | Path, config_path: str | Path | None = None,
             overrides: Sequence[str] = (), resume: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune a checkpoint's encoder (or a random one) on data.train, test on data.val.
    `resume`: a fine-tuning checkpoint to continue from, or "auto"; `overwrite`: move a run in `output`
    aside (see `train_loop`)."""
    config, method, head = load_with_head(checkpoint, config_path, overrides)
    if config.finetune.batch_size == 0:  # resolved here, so config.yaml and a resume see the batch that ran
        config.finetune = dataclasses.replace(config.finetune, batch_size=config.train.batch_size)
    ft = config.finetune
    test_only = ft.epochs == 0
    if test_only and not config.data.val:
        raise ConfigError("finetune.epochs=0 (the test of a fine-tuned file) needs data.val")
    if test_only and resume is not None:
        raise ConfigError("finetune.epochs=0 tests the --init file; to test a cmae fine-tuning run again, resume it "
                          "with its own finetune.epochs")
    if not test_only:
        check_evaluation_data(config, "fine-tuning")
    if config.eval.feature not in ("mean", "cls"):
        raise ConfigError(f"fine-tuning pools 'mean' or 'cls' tokens, not eval.feature={config.eval.feature!r} "
                          "(a frozen-feature readout for linprobe / knn)")
    val_samples = read_samples(config.data.val, config.data, labelled=True)
    samples, select_samples = [], []  # a test trains on nothing
    if not test_only:
        samples, select_samples = training_and_selection(config)
    num_classes, use_head = classes_and_head(checkpoint, head, [s.label for s in samples + val_samples],
                                             config.eval.feature, test_only)
    encoder = finetune_encoder(config, method.encoder)
    train = finetune_train_config(config)
    test_set = VideoDataset(val_samples, MultiViewClips(config.data, config.eval.clips, config.eval.crops),
                            backend=config.data.decoder)

    def build_classifier(device: torch.device) -> Classifier:
        classifier = Classifier(encoder, num_classes, config.eval.feature, ft.encoder_norm, ft.head_dropout)
        if use_head:  # the file's fc_norm and head (the encoder is in place already)
            classifier.load_state_dict(head, strict=False)
            print(f"  classification head: {len(head)} tensors from {checkpoint}", flush=True)
        return classifier.to(device)

    def summarize(result: dict[str, Any]) -> dict[str, Any]:
        return {**result, "protocol": "finetune", "checkpoint": str(checkpoint), "num_train": len(samples),
                "num_val": len(val_samples) - result["skipped_val"], "num_classes": num_classes,
                "label_fraction": config.eval.label_fraction, "head_from_file": use_head}

    if test_only:
        return evaluate_classifier(build_classifier, test_set, config, output, summarize)

    def make_job(device: torch.device) -> Job:
        classifier = build_classifier(device)
        objective = FinetuneObjective(classifier, num_classes, ft.mixup, ft.cutmix, ft.label_smoothing,
                                      ft.model_ema_decay if ft.model_ema else None)
        view = ClipView(config.data, train=True, randaug=(ft.randaug_n, ft.randaug_m), erase=ft.reprob)
        dataset = VideoDataset(samples, view, backend=config.data.decoder, cache_decoded=config.data.cache_decoded,
                               repeat=config.data.repeat)

        checker = BestEpoch(config, select_samples or val_samples, "select" if select_samples else "val", output,
                            device)

        def finish(trained: FinetuneObjective) -> dict[str, Any]:
            result = summarize(multiview_accuracy(trained.classifier, test_set, config, device))
            if trained.ema is not None:
                ema = multiview_accuracy(trained.ema, test_set, config, device)
                result["ema"] = {"top1": ema["top1"], "top5": ema["top5"], "decay": ft.model_ema_decay}
            return {**result, **checker.test_best(trained, test_set)}

        return Job(objective, dataset, layer_decay_groups(classifier, ft.weight_decay, ft.layer_decay), train, finish,
                   after_epoch=checker if ft.eval_every else None)

    return train_loop(config, output, make_job, resume, overwrite=overwrite)


def finetune_encoder(config: Config, pretrained: nn.Module) -> nn.Module:
    """The encoder rebuilt with fine-tuning's drop path and attention dropout, holding the pre-trained weights."""
    encoder = build_encoder(dataclasses.replace(config.model, drop_path=config.finetune.drop_path))
    encoder.load_state_dict(pretrained.state_dict())
    for module in encoder.modules():
        if hasattr(module, "attn_drop"):
            module.attn_drop = config.finetune.attn_drop_rate
    return encoder


def training_and_selection(config: Config) -> tuple[list, list]:
    """data.train's samples (a seeded, class-balanced `eval.label_fraction`), less the selection split
    (`eval.select_fraction` of them, class-balanced) that judges the best epoch; and that split."""
    samples = read_samples(config.data.train, config.data, labelled=True)
    keep = balanced_fraction([s.label for s in samples], config.eval.label_fraction, config.eval.fraction_seed)
    samples = [samples[i] for i in keep]
    if not config.eval.select_fraction:
        return samples, []
    select = set(balanced_fraction([s.label for s in samples], config.eval.select_fraction,
                                   config.eval.fraction_seed + 1))
    return [s for i, s in enumerate(samples) if i not in select], [samples[i] for i in sorted(select)]


class BestEpoch:
    """`after_epoch` of fine-tuning (`finetune.eval_every`): a single-view validation on the selection split
    (`on="select"`) or data.val (`on="val"`, the official scripts' practice, which inflates the number
    reported for the best epoch); the best so far (a resumed run reads its metrics.jsonl) is kept as
    checkpoint-best.pt by the loop, and `test_best` gives it the full multi-view test at the end."""

    def __init__(self, config: Config, samples: list, on: str, output: str | Path, device: torch.device):
        self.config, self.on, self.device, self.output = config, on, device, Path(output)
        self.quick = VideoDataset(samples, MultiViewClips(config.data, 1, 1), backend=config.data.decoder)
        self.key = f"{on}_top1"
        metrics = self.output / "metrics.jsonl"
        rows = [row for row in read_metrics(metrics) if self.key in row] if metrics.is_file() else []
        self.best = max(rows, key=lambda row: row[self.key], default=None)

    def __call__(self, objective: FinetuneObjective, epochs_done: int) -> dict[str, Any]:
        every = self.config.finetune.eval_every
        if epochs_done % every and epochs_done != self.config.finetune.epochs:
            return {}
        top1 = multiview_accuracy(objective.classifier, self.quick, self.config, self.device)["top1"]
        best = self.best is None or top1 > self.best[self.key]
        if best:
            self.best = {self.key: top1, "epoch": epochs_done - 1}
        return {self.key: top1, "best": best}

    def test_best(self, objective: FinetuneObjective, test_set: VideoDataset) -> dict[str, Any]:
        """{} without eval_every; else the best epoch (1-based), what judged it, and its multi-view test."""
        if self.best is None or not (self.output / BEST_NAME).is_file():
            return {}
        state = torch.load(self.output / BEST_NAME, map_location="cpu", weights_only=False)
        objective.load_state_dict(state["model"])
        test = multiview_accuracy(objective.classifier, test_set, self.config, self.device)
        return {"best_epoch": self.best["epoch"] + 1, "best_on": self.on, f"best_{self.key}": self.best[self.key],
                "best": {"top1": test["top1"], "top5": test["top5"], "checkpoint": str(self.output / BEST_NAME)}}


def classes_and_head(checkpoint, head: dict[str, torch.Tensor], labels: list[int], feature: str,
                     test_only: bool) -> tuple[int, bool]:
    """The classifier's class count, and whether it starts from the file's fine-tuned head: always
    in a test, else when the head fits (as VideoMAE's code keeps one): as many classes as the data,
    and the layout of `feature` (mean pooling has `fc_norm`, the class token not)."""
    file_classes = head["head.weight"].shape[0] if "head.weight" in head else None
    data_classes = max(labels) + 1
    layout = {"head.weight", "head.bias"} | ({"fc_norm.weight", "fc_norm.bias"} if feature == "mean" else set())
    if test_only:
        if file_classes is None:
            raise ConfigError(f"finetune.epochs=0 tests a fine-tuned file's classifier, and {checkpoint} has none "
                              "(no head / classifier weights)")
        if data_classes > file_classes:
            raise ConfigError(f"{checkpoint}'s classifier has {file_classes} classes; data.val has labels up to "
                              f"{data_classes - 1}")
        if head.keys() != layout:
            raise ConfigError(f"{checkpoint}'s classifier has {sorted(head)}; eval.feature={feature} needs "
                              f"{sorted(layout)}: a file with fc_norm pools the mean of the tokens (eval.feature=mean), "
                              "one without it the class token (eval.feature=cls)")
        return file_classes, True
    if file_classes is None:
        return data_classes, False
    if file_classes != data_classes or head.keys() != layout:
        print(f"  the file's classification head ({file_classes} classes, {sorted(head)}) does not fit this "
              f"classifier ({data_classes} classes, eval.feature={feature}): a new head starts", flush=True)
        return data_classes, False
    return data_classes, True


def evaluate_classifier(build_classifier: Callable[[torch.device], Classifier], test_set: VideoDataset, config: Config,
                    output: str | Path, summarize: Callable[[dict], dict]) -> dict[str, Any]:
    """finetune.epochs=0, VideoMAE's --eval: the multi-view test of a fine-tuned classifier, split over
    torchrun's processes; rank 0 writes config.yaml and summary.json."""
    device = resolve_device(config.train.device)
    info = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    try:
        summary = summarize(multiview_accuracy(build_classifier(device), test_set, config, device))
        if info.is_main:
            write_summary(output, config, summary)
        return summary
    finally:
        cleanup()

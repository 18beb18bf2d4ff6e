"""Probes on frozen features: the linear probe (MAE), the attentive probe (V-JEPA), and many
settings of either trained together in one pass over the same features.

    heads = make_heads("attentive", settings, dim=192, num_classes=8, cfg=config.eval)
    train_probes(heads, settings, tokens, labels, "attentive", config.eval)  # tokens [N, L, D]
    scores = probe_scores(heads[0], val_tokens)  # [N_val, K]

Every head sees the same batches in the same order; their losses are summed and one backward
pass updates all of them (a head's gradient depends on its own loss only), each in its own
optimiser group with its own lr and weight decay.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cmae.config import EvalConfig
from cmae.engine.schedule import cosine_with_warmup
from cmae.models.vit import Block, Mlp


@dataclass(frozen=True)
class ProbeSetting:
    """One grid point: the peak lr (linear: the base lr, x batch / 256) and the weight decay."""

    lr: float
    weight_decay: float


def grid_settings(kind: str, cfg: EvalConfig) -> list[ProbeSetting]:
    """`eval.probe_grid`'s lr x weight decay product, or the one setting of `eval.*`."""
    if cfg.probe_grid:
        lrs, decays = cfg.probe_grid
        return [ProbeSetting(lr, wd) for lr, wd in itertools.product(lrs, decays)]
    if kind == "linear":
        return [ProbeSetting(cfg.probe_base_lr, cfg.probe_weight_decay)]
    return [ProbeSetting(cfg.attn_lr, cfg.attn_weight_decay)]


class CrossAttention(nn.Module):
    """A few queries `[B, Q, D]` attend over LayerNorm(tokens) -> `[B, Q, D]` (V-JEPA's cross-attention: the
    norm's affine, q, k, v and proj linears), computed from the query side.

    Keys and values are linear in the tokens, so nothing is projected per token: each head's query is
    mapped back to token space (score = (W_k^T q * gamma) . n; the terms without n cancel in the softmax)
    and the values are the projection of the attention-weighted mean of the normalised tokens n. The
    result is the textbook one (a test checks it) at Q x heads x N x D products instead of N x D x 2D: a
    probe costs little next to the LayerNorm of the tokens, which every probe of a grid shares.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"eval.attn_heads={num_heads} does not divide the encoder's width {dim}")
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim, eps=1e-6)  # its affine part, on the query side; `normalize` is the rest
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, queries: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
        """queries `[B, Q, D]`, `normalize(tokens)` `[B, N, D]` -> `[B, Q, D]`."""
        b, q_len, d = queries.shape
        heads, width = self.num_heads, d // self.num_heads
        q = self.q(queries).reshape(b, q_len, heads, width)
        probe = torch.einsum("bqhc,hcd->bqhd", q, self.k.weight.reshape(heads, width, d)) * self.norm.weight
        weights = (torch.einsum("bqhd,bnd->bhqn", probe, normed) * width**-0.5).softmax(dim=-1)
        pooled = torch.einsum("bhqn,bnd->bqhd", weights, normed) * self.norm.weight + self.norm.bias
        out = torch.einsum("bqhd,hcd->bqhc", pooled, self.v.weight.reshape(heads, width, d))
        return self.proj((out + self.v.bias.reshape(heads, width)).reshape(b, q_len, d))


def normalize(tokens: torch.Tensor) -> torch.Tensor:
    """Token grids `[B, N, D]` (fp16 from the cache) -> float32 LayerNorm without affine: the attentive
    probes' shared input."""
    return F.layer_norm(tokens.float(), tokens.shape[-1:], eps=1e-6)


class AttentiveProbe(nn.Module):
    """Token grid `[B, N, D]` -> logits `[B, K]` (V-JEPA's attentive classifier).

    `queries` learned tokens cross-attend over the layer-normed grid (a pre-norm block with an
    MLP), `depth - 1` self-attention blocks mix the queries, their mean goes to a linear layer.
    """

    def __init__(self, dim: int, num_classes: int, queries: int = 1, depth: int = 1, heads: int = 4):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(1, queries, dim))
        self.cross = CrossAttention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth - 1))
        self.linear = nn.Linear(dim, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.queries, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classify(normalize(tokens))

    def classify(self, normed: torch.Tensor) -> torch.Tensor:
        """`normalize(tokens)` `[B, N, D]` -> logits `[B, K]` (a grid normalises once for all its probes)."""
        q = self.queries.expand(len(normed), -1, -1)
        q = q + self.cross(q, normed)
        q = q + self.mlp(self.norm_mlp(q))
        for block in self.blocks:
            q = block(q)
        return self.linear(q.mean(dim=1))


def linear_head(dim: int, num_classes: int) -> nn.Module:
    """BatchNorm without affine + linear (MAE's linear probe): `[B, D]` -> `[B, K]`. The BatchNorm
    learns its statistics on the training features and is in eval mode on the test features."""
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, num_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    return head


def make_heads(kind: str, count: int, dim: int, num_classes: int, cfg: EvalConfig, seed: int = 0) -> list[nn.Module]:
    """`count` freshly initialised heads of `kind` ("linear" or "attentive"), seeded."""
    torch.manual_seed(seed)
    if kind == "linear":
        return [linear_head(dim, num_classes) for _ in range(count)]
    return [AttentiveProbe(dim, num_classes, cfg.attn_queries, cfg.attn_depth, cfg.attn_heads) for _ in range(count)]


def tensor_batches(x: torch.Tensor, y: torch.Tensor, batch: int) -> Callable[[int], Iterator]:
    """`epoch -> (features, labels)` batches of a fresh shuffle of cached features each epoch. The shuffles
    continue torch's global stream from where `make_heads` left it (the linear probe's order since before
    probe grids, so its numbers stay), on a copy: the global stream itself is not moved."""
    generator = torch.Generator().set_state(torch.get_rng_state())

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch):
            yield x[order[start : start + batch]], y[order[start : start + batch]]

    return epoch_batches


def train_probes(heads: Sequence[nn.Module], settings: Sequence[ProbeSetting], x: torch.Tensor | None, y: torch.Tensor,
                 kind: str, cfg: EvalConfig,
                 stream: Callable[[int, int], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None) -> None:
    """Train every head on features `x` (`[N, D]` or token grids `[N, L, D]`) and labels `[N]`, in place;
    or, given `stream(epoch, batch)`, on the batches it yields each epoch (`eval.probe_augment`: features of
    augmented clips, computed as they go; `x` unused, `y` gives the count).

    linear: SGD momentum 0.9, lr = setting.lr x batch / 256, `probe_epochs`, `probe_batch_size`;
    attentive: AdamW, lr = setting.lr, `attn_epochs`, `attn_batch_size`. Both per-iteration cosine
    with `probe_warmup_epochs` of warm-up, at most half the epochs (the attentive probe's 20 are few).
    """
    linear = kind == "linear"
    epochs = cfg.probe_epochs if linear else cfg.attn_epochs
    batch = min(cfg.probe_batch_size if linear else cfg.attn_batch_size, len(y))
    scale = batch / 256 if linear else 1.0
    peaks = [setting.lr * scale for setting in settings]
    groups = [{"params": list(head.parameters()), "lr": peak, "weight_decay": setting.weight_decay}
              for head, peak, setting in zip(heads, peaks, settings, strict=True)]
    optimizer = torch.optim.SGD(groups, lr=peaks[0], momentum=0.9) if linear else torch.optim.AdamW(groups, lr=peaks[0])
    steps_per_epoch = math.ceil(len(y) / batch)
    total = epochs * steps_per_epoch
    warmup = min(cfg.probe_warmup_epochs, epochs / 2) * steps_per_epoch
    epoch_batches = tensor_batches(x, y, batch) if stream is None else lambda epoch: stream(epoch, batch)
    step = 0
    for head in heads:
        head.train()
    for epoch in range(epochs):
        for inputs, targets in epoch_batches(epoch):
            if len(targets) < 2:  # BatchNorm needs two samples
                continue
            for group, peak in zip(optimizer.param_groups, peaks, strict=True):
                group["lr"] = cosine_with_warmup(step, total, warmup, peak)
            if linear:
                loss = sum(F.cross_entropy(head(inputs.float()), targets) for head in heads)
            else:  # the LayerNorm of the tokens, the probes' largest cost, once for all of them
                normed = normalize(inputs)
                loss = sum(F.cross_entropy(head.classify(normed), targets) for head in heads)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    for head in heads:
        head.eval()


@torch.no_grad()
def probe_scores(head: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Logits `[N, K]` of a trained head (eval mode) on features `x`, in batches (token grids are large)."""
    head.eval()
    return torch.cat([head(x[start : start + batch]) for start in range(0, len(x), batch)])


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Percent of rows whose label is among the k best scores (k capped at the class count)."""
    result = {}
    for k in ks:
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        result[f"top{k}"] = 100.0 * (top == labels[:, None]).any(dim=1).float().mean().item()
    return result


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 num_classes: int, cfg: EvalConfig, seed: int = 0) -> dict[str, float]:
    """One linear probe (`eval.probe_*`) trained on `train_x` `[N, D]`, scored on `val_x`: top1/top5."""
    setting = [ProbeSetting(cfg.probe_base_lr, cfg.probe_weight_decay)]
    heads = make_heads("linear", 1, train_x.shape[1], num_classes, cfg, seed)
    train_probes(heads, setting, train_x, train_y, "linear", cfg)
    return topk_accuracy(probe_scores(heads[0], val_x), val_y)

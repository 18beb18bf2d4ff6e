"""Loss functions, each a plain function of tensors so it can be tested by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmae.distributed import gather_no_grad, gather_with_grad, rank_and_world


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the masked tokens only (MAE eq., CMAE-V eq. 7).

    pred, target: `[B, N, P]`; masked: `[B, N]` bool, or None when only the scored (masked)
    tokens were passed. Each token's error is the mean over its P values; the loss is the
    mean over all masked tokens of the batch, so visible tokens' predictions get no gradient.
    """
    if masked is None:  # every token has P values: the mean of the token means
        return F.mse_loss(pred, target) if pred.numel() else pred.sum()  # nothing masked: 0, not NaN
    per_token = (pred - target).pow(2).mean(dim=-1)
    weights = masked.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1.0)


def info_nce(
    query: torch.Tensor,
    keys: torch.Tensor,
    temperature: float,
    labels: torch.Tensor | None = None,
    excluded: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE (CMAE-V eq. 5): cross-entropy of cosine similarities / temperature.

    query: `[B, D]` this rank's predictions; keys: `[M, D]` every candidate (the global
    batch, gathered across ranks); labels: `[B]` index of each query's positive in keys
    (default `arange(B)`, i.e. keys is this rank's own batch); excluded: `[B, M]` bool,
    candidates that are not negatives of the query (see `same_instance`). Mean over the B queries.
    """
    query = F.normalize(query.float(), dim=-1)
    keys = F.normalize(keys.float(), dim=-1)
    logits = query @ keys.T / temperature
    if labels is None:
        labels = torch.arange(query.shape[0], device=query.device)
    if excluded is not None:
        logits = logits.masked_fill(excluded, float("-inf"))
    return F.cross_entropy(logits, labels)


def same_instance(query_ids: torch.Tensor | None, key_ids: torch.Tensor | None, labels: torch.Tensor):
    """`[B, M]` bool: candidates from the same video (or image) as the query, other than its positive.

    With `data.repeat` k > 1 a batch holds k samples of each video (and a sample standing in for an
    undecodable file repeats a neighbour): they are neither negatives nor extra positives of each
    other, so they leave the loss. ids: the samples' data-set indices, `[B]` and `[M]`; None: all differ.
    """
    if query_ids is None or key_ids is None:
        return None
    excluded = query_ids[:, None] == key_ids[None, :]
    excluded[torch.arange(len(labels), device=labels.device), labels] = False
    return excluded


def global_info_nce(
    query: torch.Tensor, keys: torch.Tensor, temperature: float, ids: torch.Tensor | None = None
) -> torch.Tensor:
    """InfoNCE whose negatives are every other sample of the **global** batch.

    The target keys `[B, D]` (no gradient) are gathered from all ranks; this rank's
    positives sit at `arange(B) + B * rank`. Averaged over ranks by DDP's gradient mean,
    the loss equals that of one process holding the whole batch. ids `[B]`: each sample's
    video; other samples of the same video are not negatives (`same_instance`).
    """
    rank, _ = rank_and_world()
    all_keys = gather_no_grad(keys.detach())
    labels = torch.arange(query.shape[0], device=query.device) + query.shape[0] * rank
    all_ids = None if ids is None else gather_no_grad(ids.to(query.device))
    excluded = same_instance(None if ids is None else ids.to(query.device), all_ids, labels)
    return info_nce(query, all_keys, temperature, labels, excluded)


def symmetric_info_nce(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, ids: torch.Tensor | None = None
) -> torch.Tensor:
    """ViC-MAE eq. 3, symmetrised (SimCLR's NT-Xent) over the **global** batch.

    z1, z2: `[B, D]` this rank's embeddings of the two views. Every embedding of both
    views from every rank is a candidate; for an anchor the positive is its own other
    view, found by global index (`rank * B + i`), and every other sample of both views is
    a negative (2(N-1) of them for a global batch N); the anchor itself is excluded. The
    candidates are gathered **with** gradient, so under DDP's gradient mean the result
    matches one process holding the whole batch. Mean over the 2B local anchors. ids `[B]`:
    each sample's video; other samples of the same video are not negatives (`same_instance`).
    """
    rank, world = rank_and_world()
    b = z1.shape[0]
    z1, z2 = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)
    keys = torch.cat([gather_with_grad(z1), gather_with_grad(z2)])  # [2 * W * B, D]
    queries = torch.cat([z1, z2])  # [2B, D]
    logits = queries @ keys.T / temperature
    own = torch.arange(b, device=z1.device) + rank * b
    self_index = torch.cat([own, own + world * b])
    positive_index = torch.cat([own + world * b, own])
    logits[torch.arange(2 * b, device=z1.device), self_index] = float("-inf")
    if ids is not None:
        ids = ids.to(z1.device)
        all_ids = gather_no_grad(ids)
        logits = logits.masked_fill(same_instance(ids.repeat(2), all_ids.repeat(2), positive_index), float("-inf"))
    return F.cross_entropy(logits, positive_index)


def cross_view_info_nce(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, ids: torch.Tensor | None = None
) -> torch.Tensor:
    """ViC-MAE's Algorithm 1: ctr(p_i, z_j) + ctr(z_j, p_i), a **sum** of two directions.

    z1, z2: `[B, D]` this rank's embeddings of the two views. Each direction is InfoNCE
    whose candidates are the other view's embeddings of the global batch (gathered with
    gradient, positives by global index); unlike eq. 3 the same view gives no negatives,
    and the sum is twice the scale of `symmetric_info_nce`'s mean. The pseudocode's `ctr`
    also returns `2 * loss`; that constant belongs to the weight lambda and is left out.
    ids `[B]`: each sample's video; other samples of the same video are not negatives.
    """
    rank, _ = rank_and_world()
    labels = torch.arange(z1.shape[0], device=z1.device) + z1.shape[0] * rank
    ids = None if ids is None else ids.to(z1.device)
    excluded = same_instance(ids, None if ids is None else gather_no_grad(ids), labels)
    return (info_nce(z1, gather_with_grad(z2), temperature, labels, excluded)
            + info_nce(z2, gather_with_grad(z1), temperature, labels, excluded))


def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's negative-cosine term 2(1 - p.z) of eq. 4, with the stop-gradient on z."""
    return 2 - 2 * (F.normalize(p.float(), dim=-1) * F.normalize(z.detach().float(), dim=-1)).sum(-1).mean()


def vicreg_terms(p: torch.Tensor, z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> dict[str, torch.Tensor]:
    """VICReg's invariance, variance and covariance terms (ViC-MAE appendix B eqs. 5-7).

    p, z: `[B, D]` this rank's embeddings; the variance and covariance statistics are
    taken over the global batch (gathered with gradient, as VICReg's code does).
    invariance = mean squared distance; variance = v(P) + v(Z), v = mean over dims of
    max(0, gamma - sqrt(Var + eps)); covariance = c(P) + c(Z), c = sum of squared
    off-diagonal covariances / D.
    """
    invariance = F.mse_loss(p.float(), z.float())
    variance, covariance = p.new_zeros((), dtype=torch.float32), p.new_zeros((), dtype=torch.float32)
    for x in (gather_with_grad(p.float()), gather_with_grad(z.float())):
        x = x - x.mean(dim=0)
        variance = variance + F.relu(gamma - torch.sqrt(x.var(dim=0) + eps)).mean()
        cov = x.T @ x / (x.shape[0] - 1)
        off_diagonal = cov - torch.diag(torch.diag(cov))
        covariance = covariance + off_diagonal.pow(2).sum() / x.shape[1]
    return {"invariance": invariance, "variance": variance, "covariance": covariance}

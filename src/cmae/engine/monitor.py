"""`train.monitor`: a cheap frozen evaluation every few pre-training epochs, so a wasted run shows early
(lightly's and solo-learn's online kNN). The loss is not that signal here: two runs can end at the same
reconstruction loss with 16 points between their probes.

The encoder's features of two small labelled lists (the evaluation's own test views and `eval.*`
settings, features uncached: the encoder changes every epoch) -> the kNN (`eval.knn_normalize`) or the
linear probe -> `monitor_top1`, which the loop logs to metrics.jsonl and TensorBoard.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cmae.config import Config
from cmae.data.lists import read_samples
from cmae.engine.evaluate import extract_features
from cmae.engine.knn import knn_classify
from cmae.engine.probes import linear_probe


def monitor_hook(config: Config) -> Callable[[nn.Module, int], dict[str, float]] | None:
    """`after_epoch(method, epochs_done)` -> {"monitor_top1": percent} on every `train.monitor.every_epochs`-th
    and the last epoch, {} on the others; None when the monitor is off. Every rank computes it (an
    FSDP-sharded encoder needs all of them in its forward)."""
    monitor = config.train.monitor
    if not monitor.every_epochs:
        return None
    train_samples = read_samples(monitor.train, config.data, labelled=True)
    val_samples = read_samples(monitor.val, config.data, labelled=True)

    def after_epoch(method: nn.Module, epochs_done: int) -> dict[str, float]:
        if epochs_done % monitor.every_epochs and epochs_done != config.train.epochs:
            return {}
        train_x, train_y = extract_features(method.encoder, train_samples, config)
        val_x, val_y = extract_features(method.encoder, val_samples, config)
        classes = int(max(train_y.max(), val_y.max())) + 1
        if monitor.protocol == "knn":
            result = knn_classify(train_x, train_y, val_x, val_y, classes, config.eval.knn_k,
                                  config.eval.knn_temperature, config.eval.knn_normalize)
        else:
            result = linear_probe(train_x, train_y, val_x, val_y, classes, config.eval, config.train.seed)
        return {"monitor_top1": result["top1"]}

    return after_epoch

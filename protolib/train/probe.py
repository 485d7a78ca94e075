"""Linear probe on a frozen encoder (MATH.md §7b): a bias-free linear classifier trained
with SGD on fixed embeddings, batches drawn with replacement, polynomial decay."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from protolib.train.evaluate import error_rate
from protolib.train.schedule import lr_multiplier


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int,
    iterations: int = 1000,
    lr: float = 0.1,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> dict[str, float]:
    """Train ``W`` (K, d) on ``train_features`` (N, d) for ``iterations`` batches; return
    ``{"probe_train_error", "probe_accuracy"}`` (test accuracy)."""
    device = train_features.device
    generator = torch.Generator(device=device).manual_seed(seed)
    weight = torch.zeros(num_classes, train_features.shape[1], device=device, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=lr, momentum=momentum, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier("poly", total=iterations))
    n = train_features.shape[0]
    with torch.enable_grad():
        for _ in range(iterations):
            index = torch.randint(0, n, (batch_size,), device=device, generator=generator)
            loss = F.cross_entropy(train_features[index] @ weight.T, train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        train_pred = (train_features @ weight.T).argmax(1)
        test_pred = (test_features @ weight.T).argmax(1)
    return {
        "probe_train_error": error_rate(train_pred, train_labels),
        "probe_accuracy": 1.0 - error_rate(test_pred, test_labels),
    }

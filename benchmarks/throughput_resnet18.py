"""Training throughput of `resnet18_cifar` at batch 256 on synthetic 32×32 images:
protolib's device-resident loader (batched crop + flip on the device) against a
baseline with torchvision-style per-sample transforms (PIL image → RandomCrop(32, pad 4)
→ RandomHorizontalFlip → ToTensor → Normalize) and a `DataLoader` with worker processes.

    .venv/bin/python benchmarks/throughput_resnet18.py [--steps 5] [--device cuda]

Two figures per pipeline, in images/s: the data pipeline alone, and full training steps
(data + forward + backward + SGD step, cross-entropy with a linear head). The model,
optimiser and precision settings are identical; only the data path differs. On CUDA both
use bfloat16 autocast and channels-last, timed with CUDA events.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from protolib.data import Augment, DeviceLoader, load_dataset
from protolib.models import Network, build_backbone


class PerSampleDataset(Dataset):
    """What `torchvision.datasets.CIFAR10` does: one PIL image per item, then transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform  # images (N,H,W,C)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> Timer:
        if self.device.type == "cuda":
            self.start_event = torch.cuda.Event(enable_timing=True)
            self.end_event = torch.cuda.Event(enable_timing=True)
            self.start_event.record()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.end_event.record()
            torch.cuda.synchronize(self.device)
            self.seconds = self.start_event.elapsed_time(self.end_event) / 1000
        else:
            self.seconds = time.perf_counter() - self.start


def pipelines_of(
    image_size: int, train_size: int, batch_size: int, device: torch.device, workers: int
) -> tuple[Iterator[tuple[Tensor, Tensor]], Iterator[tuple[Tensor, Tensor]]]:
    """Endless ``(x, y)`` batches on ``device`` from synthetic CIFAR-shaped uint8 images
    (stored as CIFAR is), crop (padding 4) and flip: protolib's DeviceLoader (batched on
    the device), and a torchvision DataLoader with per-sample transforms in ``workers``
    processes (the baseline)."""
    data = load_dataset(
        "synthetic",
        num_classes=10,
        channels=3,
        image_size=image_size,
        train_size=train_size,
        test_size=10,
    )
    uint8 = (data.train.images * 255).round().to(torch.uint8)
    labels = data.train.labels
    ours = DeviceLoader(
        uint8,
        labels,
        batch_size=batch_size,
        mean=data.mean,
        std=data.std,
        device=device,
        sampling="epoch",
        augment=Augment(4, True),
        seed=0,
    )
    transform = T.Compose(
        [
            T.RandomCrop(image_size, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(data.mean, data.std),
        ]
    )
    baseline = DataLoader(
        PerSampleDataset(uint8.permute(0, 2, 3, 1).numpy(), labels.numpy(), transform),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )

    def ours_batches() -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            x, y, _ = ours.next_batch()
            yield x, y

    def baseline_batches() -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            for x, y in baseline:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return ours_batches(), baseline_batches()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train-size", type=int, default=10_240)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per pipeline")
    parser.add_argument("--data-batches", type=int, default=20, help="timed batches, data only")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    ours, baseline = pipelines_of(32, args.train_size, args.batch_size, device, args.workers)
    pipelines = {"protolib DeviceLoader": ours, "DataLoader per-sample": baseline}
    torch.manual_seed(0)
    network = Network(
        build_backbone("resnet18_cifar", in_shape=(3, 32, 32)), num_classes=10, head="linear"
    ).to(device)
    if on_cuda:
        network = network.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def step(x, y):
        if on_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda):
            loss = F.cross_entropy(network(x).logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    where = (
        torch.cuda.get_device_name(device) if on_cuda else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"# {where}; torch {torch.__version__}; batch {args.batch_size}; "
        f"{args.workers} DataLoader workers"
    )
    print(f"{'pipeline':<24}{'data only img/s':>17}{'train step img/s':>18}")
    for name, batches in pipelines.items():
        for _batch in itertools.islice(batches, 2):  # warm-up (workers start)
            pass
        timer = Timer(device)
        with timer:
            for _batch in itertools.islice(batches, args.data_batches):
                pass
        data_rate = args.data_batches * args.batch_size / timer.seconds
        step(*next(batches))  # warm-up
        with timer:
            for x, y in itertools.islice(batches, args.steps):
                step(x, y)
        train_rate = args.steps * args.batch_size / timer.seconds
        print(f"{name:<24}{data_rate:>17.0f}{train_rate:>18.1f}", flush=True)


if __name__ == "__main__":
    main()

"""From a validated run config to ready objects: :func:`prepare` → :class:`Prepared`.

Data (balancing, STEP or exponential imbalance, corruption), network
(:func:`~protolib.models.build_network`), prototypes, loss, optimiser, learning-rate
schedule and loaders are all built here, and every input a component refuses becomes a
:class:`ConfigError` naming its key, before anything is written. The speed options are
resolved here too: whether the network is compiled (:mod:`protolib.train.compilation`)
and which SGD kernels update it (:func:`~protolib.train.sgd.sgd_kernels`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from protolib.data import (
    Augment,
    DatasetSplits,
    DeviceLoader,
    bound_points,
    load_dataset,
    split_validation,
    training_labels,
)
from protolib.data.loader import to_device
from protolib.geometry import GeometryError, make_prototypes, target_gram
from protolib.io import one_line
from protolib.losses import Loss, LossNeeds
from protolib.models import Network, build_network
from protolib.registry import LOSSES, RegistryError
from protolib.train.compilation import resolve_compile
from protolib.train.config import ConfigError, RunConfig
from protolib.train.distributed import Launch, check_batch_split
from protolib.train.schedule import lr_multiplier
from protolib.train.sgd import SGD, SGD_FLAGS, sgd_kernels


@dataclass
class Prepared:
    """Everything a run needs, built and validated before any output is written."""

    config: RunConfig
    device: torch.device
    data: DatasetSplits
    kept: Tensor  # indices of the training split used (after imbalance)
    train_labels: Tensor  # training labels used (after corruption), on the device
    original_labels: Tensor  # labels before corruption, CPU
    changed: Tensor  # positions (into kept) whose label was changed
    needs: LossNeeds
    prototypes: Tensor | None
    target: Tensor
    network: Network
    loss: Loss
    loader: DeviceLoader
    total_steps: int
    autocast: bool
    channels_last: bool
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    test_loader: DeviceLoader  # evaluation only: iterate() in order, no sampling
    test_labels: Tensor  # on the device
    # the points held out of training for model selection (validation_fraction > 0)
    validation_loader: DeviceLoader | None = None
    validation_labels: Tensor | None = None  # on the device
    compile: bool = False  # the training loop compiles the network (compile, resolved)
    sgd_impl: str = "loop"  # the optimiser's kernels (sgd_impl, resolved: SGD_FLAGS)


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """The device a config's ``device`` names (``auto``: CUDA when available); with
    several processes on CUDA, the ``local_rank``-th GPU of the node."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' was asked for but no CUDA device is available; use auto or cpu"
        )
    if name == "cuda" and local_rank is not None:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ConfigError(
                f"device 'cuda': process {local_rank} of this node has no GPU of its own "
                f"({count} visible); start at most {count} processes per node"
            )
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def prepare(config: RunConfig, launch: Launch | None = None) -> Prepared:
    """Load data, build model, prototypes, loss, optimiser and schedule; raise
    :class:`ConfigError` on any invalid input. ``launch``: this process's place among
    several processes training the run (its GPU, SyncBatchNorm, shards that split
    equally), None for one process."""
    if launch is not None:
        check_batch_split(config.batch_size, launch.size)
    device = resolve_device(config.device, None if launch is None else launch.local_rank)
    compile_network = resolve_compile(config.compile, device)
    sgd_impl = sgd_kernels(config.sgd_impl, device)
    if config.threads:
        torch.set_num_threads(config.threads)
    with options_errors("dataset_options"):
        data = load_dataset(config.dataset, **config.dataset_options)
    kept, original, labels, changed, validation = _training_points(config, data)
    needs = config.loss_needs()
    if needs.head_input == "encoder" and config.projector == "none":  # the same layer then
        needs = dataclasses.replace(needs, head_input="embedding")
    torch.manual_seed(config.seed)  # the network's initial weights
    network, prototypes, target = _network(config, data, needs)
    loss_options = dict(config.loss_options)
    if needs.prototypes != "no":
        loss_options["prototypes"] = prototypes
    if needs.prototypes == "optional":
        loss_options["n_w"] = config.n_w
    if needs.priors:  # π_c = n_c / N over the labels the run trains on (MATH.md §1.7)
        counts = torch.bincount(labels, minlength=data.num_classes).to(torch.float64)
        loss_options["priors"] = counts / counts.sum()
    with options_errors("loss_options"):
        loss = LOSSES.create(config.loss, **loss_options)
    on_cuda = device.type == "cuda"
    if launch is not None:
        network = _for_processes(config, network, launch, device)
        if config.binding * data.num_classes % launch.size:
            raise ConfigError(
                f"binding {config.binding} adds {config.binding * data.num_classes} bound "
                f"points to every batch, which do not split into {launch.size} equal "
                f"shards; allowed: a binding whose {data.num_classes} classes' points "
                f"are a multiple of {launch.size}"
            )
    channels_last = config.channels_last and on_cuda
    network = network.to(device)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    loader, test_loader = _loaders(config, data, kept, labels, device)
    if config.iterations is not None:
        total = config.iterations
    else:
        total = config.epochs * loader.steps_per_epoch
    optimizer, scheduler = _optimiser(config, network, total, loader.steps_per_epoch, sgd_impl)
    return Prepared(
        config=config,
        device=device,
        data=data,
        kept=kept,
        train_labels=to_device(labels, device),
        original_labels=original,
        changed=changed,
        needs=needs,
        prototypes=prototypes,
        loss=loss.to(device),
        target=target,
        network=network,
        loader=loader,
        autocast=config.amp and on_cuda,
        total_steps=total,
        channels_last=channels_last,
        optimizer=optimizer,
        test_labels=to_device(data.test.labels, device),
        scheduler=scheduler,
        test_loader=test_loader,
        validation_loader=_validation_loader(data, validation, device),
        validation_labels=to_device(validation[1], device) if validation else None,
        compile=compile_network,
        sgd_impl=sgd_impl,
    )


def _for_processes(
    config: RunConfig, network: Network, launch: Launch, device: torch.device
) -> Network:
    """``network`` with its batch norm synchronised over the processes (SyncBatchNorm,
    statistics of the global batch) when ``sync_batchnorm`` asks for it; the parameters
    stay the same objects and the state-dict keys the same names."""
    _refuse_random_layers(config, network, launch)
    batch_norm = torch.nn.modules.batchnorm._BatchNorm
    has_batch_norm = any(isinstance(m, batch_norm) for m in network.modules())
    if not (config.sync_batchnorm and has_batch_norm):
        return network
    if device.type != "cuda":
        raise ConfigError(
            f"sync_batchnorm true needs CUDA with several processes (torch's SyncBatchNorm "
            f"runs on GPUs only), but model {config.model!r} has batch norm and this run is "
            f"on the CPU with {launch.size} processes; set sync_batchnorm false (statistics "
            "per process) or run it in one process"
        )
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)


def _refuse_random_layers(config: RunConfig, network: Network, launch: Launch) -> None:
    """Refuse layers that draw random numbers in training (dropout, drop-path) on several
    processes: every process would draw the same masks for its shard, which is neither the
    one-process run nor independent masks."""
    for name, module in network.named_modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            rate = module.p
        elif type(module).__name__ == "DropPath":  # timm's stochastic depth
            rate = getattr(module, "drop_prob", 0.0)
        else:  # timm models apply dropout functionally, by their drop_rate
            rate = getattr(module, "drop_rate", 0.0)
        if isinstance(rate, int | float) and rate > 0:
            raise ConfigError(
                f"model {config.model!r} (model_options {config.model_options}) has a "
                f"random layer {name} ({type(module).__name__}, rate {rate}): with "
                f"{launch.size} processes each would draw the same masks for its shard; "
                "allowed: a model without dropout or drop-path, or one process"
            )


def _training_points(
    config: RunConfig, data: DatasetSplits
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """The training points a run uses: kept indices (after balancing and the run's STEP or
    exponential imbalance), their original labels, their training labels (after
    corruption) and the positions that changed (MATH.md §6); then the validation split
    ``(indices, labels)`` held out of them, or None."""
    K = data.num_classes
    _, height, width = data.image_shape
    if config.crop_padding > min(height, width):
        raise ConfigError(
            f"crop_padding must be at most the image size {min(height, width)} for "
            f"{config.dataset} ({height}x{width} images), got {config.crop_padding}"
        )
    try:
        kept, labels, changed = training_labels(
            data.train.labels,
            K,
            balance=config.balance,
            imbalance=config.imbalance,
            imbalance_ratio=config.imbalance_ratio,
            minority_fraction=config.minority_fraction,
            label_corruption=config.label_corruption,
            corruption_mode=config.corruption_mode,
            seed=config.seed,
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    validation = None
    if config.validation_fraction > 0:
        (kept, labels, changed), validation = split_validation(
            kept, labels, changed, config.validation_fraction, K, config.seed
        )
        if validation[0].numel() == 0:
            largest = int(torch.bincount(labels, minlength=K).max()) + len(validation[0])
            raise ConfigError(
                f"validation_fraction {config.validation_fraction!r} holds out no training "
                f"point (⌊f·n_c⌋ = 0 for every class); allowed: 0, or at least "
                f"{1 / max(largest, 1):.3g} for these classes"
            )
    return kept, data.train.labels[kept], labels, changed, validation


def _loaders(
    config: RunConfig, data: DatasetSplits, kept: Tensor, labels: Tensor, device: torch.device
) -> tuple[DeviceLoader, DeviceLoader]:
    """The training loader (sampling, binding, views, augmentation; seeded) of the kept
    points with their training labels, and the test loader (evaluation only: in order)."""
    try:
        bound = bound_points(labels, config.binding, data.num_classes, config.seed)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    train = DeviceLoader(
        data.train.images[kept],
        labels,
        batch_size=config.batch_size,
        mean=data.mean,
        std=data.std,
        device=device,
        sampling=config.sampling,
        views=config.views,
        augment=Augment(crop_padding=config.crop_padding, flip=config.flip),
        seed=config.seed,
        bound=bound if config.binding else None,
    )
    return train, _evaluation_loader(data, data.test.images, data.test.labels, device)


def _validation_loader(
    data: DatasetSplits, validation: tuple[Tensor, Tensor] | None, device: torch.device
) -> DeviceLoader | None:
    """The held-out training points (``(indices, labels)``) for evaluation, or None."""
    if validation is None:
        return None
    indices, labels = validation
    return _evaluation_loader(data, data.train.images[indices], labels, device)


def _evaluation_loader(
    data: DatasetSplits, images: Tensor, labels: Tensor, device: torch.device
) -> DeviceLoader:
    """A loader for evaluation only (``iterate()`` in order, the training statistics)."""
    return DeviceLoader(
        images, labels, batch_size=1, mean=data.mean, std=data.std, device=device, sampling="epoch"
    )


def _network(
    config: RunConfig, data: DatasetSplits, needs: LossNeeds
) -> tuple[Network, Tensor | None, Tensor]:
    """The network, the run's prototypes (None when its loss uses none) and the target
    Gram its class means are compared with."""
    K = data.num_classes
    uses_prototypes = needs.prototypes == "yes" or (
        needs.prototypes == "optional" and config.n_w > 0
    )
    made: list[Tensor] = []

    def prototypes(dim: int) -> Tensor:  # build_network calls it once d is known
        made.append(_prototypes(config, K, dim))
        return made[0]

    with options_errors("model_options"):
        network = build_network(
            config.model,
            in_shape=data.image_shape,
            num_classes=K,
            needs=needs,
            prototypes=prototypes if uses_prototypes else None,
            projector=config.projector,
            projector_dim=config.projector_dim,
            model_options=config.model_options,
        )
    if not uses_prototypes:
        return network, None, target_gram("etf", K)
    # the same call succeeded inside make_prototypes
    return network, made[0], target_gram(config.geometry, K, **config.geometry_options)


def _prototypes(config: RunConfig, num_classes: int, dim: int) -> Tensor:
    """The ``(K, dim)`` prototypes of the run's geometry, or a :class:`ConfigError`."""
    try:
        return make_prototypes(
            config.geometry, num_classes, dim, seed=config.seed, **config.geometry_options
        )
    except (GeometryError, RegistryError) as error:
        raise ConfigError(
            f"{error} (the embedding dimension is set by the model or projector_dim)"
        ) from None
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise ConfigError(f"geometry_options: {one_line(error, 300)}") from None


def _optimiser(
    config: RunConfig, network: Network, total: int, steps_per_epoch: int, kernels: str
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with momentum and weight decay on ``kernels`` (a key of ``SGD_FLAGS``), and
    its per-iteration schedule (milestones and warm-up in epochs are converted to
    iterations)."""
    # torch.optim.SGD bit for bit, without its ~1 s import of torch._dynamo (sgd.py)
    optimizer = SGD(
        network.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        **SGD_FLAGS[kernels],
    )
    milestones, warmup = list(config.milestones), config.warmup
    if config.epochs is not None:
        milestones = [m * steps_per_epoch for m in milestones]
        warmup *= steps_per_epoch
    multiplier = lr_multiplier(
        config.schedule,
        total=total,
        milestones=milestones,
        factor=config.lr_factor,
        power=config.poly_power,
        warmup=warmup,
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


@contextmanager
def options_errors(key: str) -> Iterator[None]:
    """Turn an error a component raises on its options into a :class:`ConfigError` that
    names ``key`` (the component's own message says which option and what is allowed);
    a :class:`ConfigError` raised inside passes unchanged."""
    try:
        yield
    except ConfigError:
        raise
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise ConfigError(f"{key}: {one_line(error, 300)}") from None

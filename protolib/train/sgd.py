"""SGD exactly as ``torch.optim.SGD``, without importing ``torch._dynamo`` (about a second
of start-up per training process on a 2-core CPU).

``torch.optim`` wraps ``step`` so that it can insert graph breaks for ``torch.compile``
(the wrapper imports ``torch._dynamo`` on every call), and wraps ``add_param_group``,
``zero_grad``, ``state_dict`` and ``load_state_dict`` with a lazy ``torch._dynamo.disable``
(imported on first call). Outside a compiled region both wrappers only call the function
they wrap, with gradients off for ``step``. This class calls those functions directly, so
its updates, state and state dicts are ``torch.optim.SGD``'s, bit for bit
(``tests/train/test_sgd.py``); the optimiser is never called inside a compiled region
here (``torch.compile`` wraps the model, not the step).

torch's three SGD kernels are chosen by its own ``foreach`` and ``fused`` arguments, passed
through unchanged; none of them imports ``torch._dynamo``. A run's ``sgd_impl`` names
one (:func:`sgd_kernels`, :data:`SGD_FLAGS`): ``loop`` updates one tensor at a time (torch's
choice for CPU parameters), ``foreach`` a list of tensors per operation (torch's choice on
CUDA; on the CPU the same arithmetic as ``loop``, bit for bit), ``fused`` all of it in one
kernel per device and dtype (the same update to float32 round-off, its operations
ordered and rounded differently).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.optim import Optimizer

from protolib.train.config_json import ConfigError

#: ``sgd_impl`` (past ``auto``) → the arguments that select its kernels
SGD_FLAGS: dict[str, dict[str, bool]] = {
    "loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def sgd_kernels(impl: str, device: torch.device) -> str:
    """The kernels (a key of :data:`SGD_FLAGS`) that ``sgd_impl`` ``impl`` names on
    ``device``: ``auto`` is ``fused`` on CUDA and ``foreach`` elsewhere.
    :class:`ConfigError` when this torch has no fused SGD for the device."""
    if impl == "auto":
        impl = "fused" if device.type == "cuda" else "foreach"
    if impl == "fused":
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        supported = _get_fused_kernels_supported_devices()
        if device.type not in supported:
            raise ConfigError(
                f"sgd_impl 'fused' needs parameters on a device with torch's fused SGD "
                f"({', '.join(supported)}), but this run's are on {device.type}; allowed: "
                "auto, loop, foreach"
            )
    return impl


def _unwrapped(function: Any) -> Any:
    """The function under ``torch.optim``'s decorators (they set ``__wrapped__``)."""
    return inspect.unwrap(function)


class SGD(torch.optim.SGD):
    """``torch.optim.SGD`` (same arguments, updates and state dicts); see the module."""

    add_param_group = _unwrapped(Optimizer.add_param_group)
    zero_grad = _unwrapped(Optimizer.zero_grad)
    state_dict = _unwrapped(Optimizer.state_dict)
    load_state_dict = _unwrapped(Optimizer.load_state_dict)
    _raw_step = _unwrapped(torch.optim.SGD.step)

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """One update, as ``torch.optim.SGD.step`` (gradients off, unless the optimiser
        was built ``differentiable``)."""
        with torch.set_grad_enabled(bool(self.defaults["differentiable"])):
            return self._raw_step(closure)

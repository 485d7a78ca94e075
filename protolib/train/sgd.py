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
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.optim import Optimizer


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

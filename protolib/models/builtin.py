"""The built-in models: importing this module registers every one of them in ``MODELS``
(the registry's ``builtins``): the small networks (:mod:`protolib.models.backbones`) and
the CIFAR ResNets (:mod:`protolib.models.resnets`)."""

from protolib.models import backbones, resnets  # noqa: F401  (they register on import)

"""``python -m protolib`` (and ``torchrun … -m protolib train …``): the ``protolib``
command."""

from protolib.cli import run

run()

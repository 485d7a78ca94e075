"""The subcommands of ``protolib``, one module each: ``add_parser(commands)`` adds its
arguments to the parser of :mod:`protolib.cli`, and ``run(args)`` does the work.

Each module imports only the standard library at the top; what a command needs (torch,
pyarrow, MLflow) is imported inside its ``run``, so ``protolib --help`` stays light.
"""

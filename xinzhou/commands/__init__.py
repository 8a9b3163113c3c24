"""One module per `xinzhou` command, each with ``setup(parser)`` and ``main(args)``."""

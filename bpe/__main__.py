"""Entry point of ``python -m bpe``; the commands live in `bpe.cli`."""

import sys

from .cli import main

sys.exit(main())

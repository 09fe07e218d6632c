#!/usr/bin/env python3
"""Chat with a GPT trained here (or GPT-2), in the terminal or through a local web server.

    python chat.py                         # the newest run that train.py wrote
    python chat.py --ckpt runs/NAME        # a run or checkpoint directory, or --ckpt gpt2
    python chat.py --serve                 # http://127.0.0.1:8000/ and an OpenAI-style API

All the logic lives in the gpt package (gpt.chat: engine, server, cli); this file only starts it. `python chat.py --help` lists the options.
"""
from __future__ import annotations

import sys

from autograd.allocator import keep_freed_memory
from gpt.chat.cli import main
from gpt.cli import fail_cleanly

if __name__ == "__main__":
    keep_freed_memory()      # malloc keeps freed blocks for the next step (autograd/allocator.py)
    sys.exit(fail_cleanly(main))

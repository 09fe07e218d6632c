"""`python -m gpt.evaluate --ckpt DIR --data NAME`: the command; the code is gpt.train.evaluate."""
import sys

from gpt.train.evaluate import main

if __name__ == "__main__":
    sys.exit(main())

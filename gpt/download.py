"""`python -m gpt.download NAME`: the command; the code is gpt.data.hub."""
import sys

from gpt.data.hub import main

if __name__ == "__main__":
    sys.exit(main())

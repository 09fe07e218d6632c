"""`python -m gpt.download ORG/NAME` (or a GPT-2 name): the command; the code is gpt.data.hub."""
import sys

from gpt.data.hub import main

if __name__ == "__main__":
    sys.exit(main())

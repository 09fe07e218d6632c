"""gpt.train: pretraining and evaluation. `pretrain` (train.py's run: settings, run directories,
the loop, checkpoints), `evaluate` (loss and perplexity; `python -m gpt.evaluate`). Imports
gpt.data and below."""

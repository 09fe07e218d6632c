"""gpt.train: training and evaluation. `loop` (the training loop that pretraining and every
fine-tuning task run, and the run directory's files), `pretrain` (train.py's run: settings,
tokenizer, model, checkpoints), `evaluate` (loss, perplexity and bits per byte;
`python -m gpt.evaluate`). Imports gpt.data and below."""

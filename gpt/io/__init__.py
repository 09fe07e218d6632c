"""gpt.io: files on disk. `files` (atomic writes, sha256, the download cache's location),
`safetensors` (read/write with NumPy), `checkpoint` (checkpoint and run directories, Hugging
Face GPT-2 conversion). Imports gpt.core, autograd and bpe."""

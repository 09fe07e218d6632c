"""gpt.data: what a run reads. `http` (the one resumable downloader), `corpora` (named corpora:
local mirror, cache, download; text splits), `tokens` (tokenized corpora cached on disk and
their batches), `hub` (model downloads). Imports gpt.io and below."""

"""gpt.chat: talking to a model. `templates` (how a conversation becomes a prompt; which
template a checkpoint uses), `engine` (the history that fits the context, the engine that
streams replies), `server` (OpenAI-compatible HTTP API and the web page in
static/), `cli` (chat.py). Imports gpt.data and below."""

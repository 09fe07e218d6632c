"""gpt.finetune: a pretrained GPT taught a task. `common` (what the tasks share), `lora`,
`classify` (chapter 6), `instruct` (chapter 7), `dpo`, `cli` (train.py's subcommands). Imports
gpt.train, gpt.chat and below."""

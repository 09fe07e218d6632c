"""The command line behind chat.py: a terminal chat, or the HTTP server with --serve.

    python chat.py                          # the newest run train.py wrote (under runs/)
    python chat.py --ckpt runs/20261125-120000
    python chat.py --ckpt gpt2              # GPT-2 downloaded with `python -m gpt.download gpt2`
    python chat.py --ckpt Qwen/Qwen3-0.6B   # any Llama/Qwen3 model downloaded the same way
    echo "Once upon a time" | python chat.py --temperature 0 --max-new-tokens 50
    python chat.py --serve --port 8000      # the OpenAI-style API and the web page

Interactive, the reply is printed token by token as it is generated; a model's reasoning
(Qwen3's <think>...</think>) is shown dimmed before the answer. Piped, every input line is one
message and stdout holds only the answers (one per message, each ending in a newline, without
the reasoning), so the chat can be scripted; messages, errors and slash-command answers go to
stderr. Sampling settings not given on the command line are the checkpoint's own
(generation_config.json), else this project's defaults.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from autograd.parallel import limit_blas_threads
from gpt.chat.engine import ChatEngine, ChatSession
from gpt.chat.server import serve
from gpt.chat.templates import TEMPLATES, ChatError, TemplateOptions, split_thinking
from gpt.core.generate import MAX_NEW_TOKENS, SamplingParams
from gpt.io.checkpoint import CheckpointError, latest_run, resolve_checkpoint

HELP = """commands:
  /reset          forget the conversation
  /temp X         sampling temperature (0 = greedy: always the most likely token)
  /top_k N        sample among the N most likely tokens (0 = no limit)
  /top_p P        sample among the most likely tokens that make up probability P (1 = all)
  /max N          at most N new tokens per reply
  /settings       show the sampling settings
  /help           this list
  /quit           leave (also Ctrl-D)
Ctrl-C stops a reply early; the part already written stays in the conversation.
A line that starts with /think or /no_think is a message: Qwen3 reads them as "reason first"
and "answer at once" for that turn."""

# Used for a setting that neither the command line nor the checkpoint gives.
DEFAULT_SAMPLING = {"temperature": 0.8, "top_k": 50, "top_p": 1.0}
DEFAULT_MAX_NEW_TOKENS = 200
THINKING_MAX_NEW_TOKENS = 2048      # a model that reasons first needs room for the answer too
SOFT_SWITCHES = ("/think", "/no_think")     # messages, not commands (see HELP)


def find_checkpoint(ckpt: str | None, out_dir: str | os.PathLike = "runs") -> Path:
    """What `--ckpt` means: a path; a GPT-2 model name ("gpt2", ...) downloaded with
    `python -m gpt.download`; or, when not given, the newest run under `out_dir`."""
    if ckpt is None:
        run = latest_run(out_dir)
        if run is None:
            raise CheckpointError(f"no --ckpt given and no training run in {out_dir}/; train "
                                  f"one with `python train.py`, or pass --ckpt DIR")
        return run
    return resolve_checkpoint(ckpt)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chat.py",
        description="Chat with a GPT in the terminal, or serve it over an OpenAI-style HTTP "
                    "API with a web page (--serve).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", default=None,
                   help="checkpoint or run directory, a Hugging Face GPT-2/Llama/Qwen3 "
                        "directory, or a name downloaded with `python -m gpt.download` "
                        "('gpt2', 'Qwen/Qwen3-0.6B'); default: the newest run in --out-dir")
    p.add_argument("--out-dir", default="runs", help="where train.py writes its runs")
    p.add_argument("--template", choices=sorted(TEMPLATES), default=None,
                   help="chat template (default: the one the checkpoint records, else base)")
    p.add_argument("--system", default=None, help="a system message (alpaca: replaces the "
                                                  "preamble; base: text before the chat; "
                                                  "SmolLM2: replaces its own)")
    p.add_argument("--no-thinking", action="store_true",
                   help="Qwen3: answer at once, without reasoning first (its template's "
                        "enable_thinking=False)")
    p.add_argument("--date", type=_date, default=None,
                   help="Llama 3: the 'Today Date' its system header states, YYYY-MM-DD "
                        "(default: today)")
    s = p.add_argument_group("sampling (default: the checkpoint's generation_config.json, "
                             "else temperature 0.8, top-k 50, top-p 1)")
    s.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=None, help="0 = no limit")
    s.add_argument("--top-p", type=float, default=None, help="1 = no nucleus cut")
    s.add_argument("--repetition-penalty", type=float, default=1.0)
    s.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"per reply (with --serve: the default max_tokens of a chat request); "
                        f"default {DEFAULT_MAX_NEW_TOKENS}, {THINKING_MAX_NEW_TOKENS} for a model "
                        f"that reasons first")
    s.add_argument("--seed", type=int, default=None, help="make sampling repeatable")
    s.add_argument("--threads", type=int, default=None,
                   help="threads per matrix product, and for Llama-family models the threads "
                        "a prefill splits each layer over (default: all cores); 1 is much "
                        "faster while another job keeps a core busy")
    srv = p.add_argument_group("server")
    srv.add_argument("--serve", action="store_true",
                     help="run the HTTP server (OpenAI API + web page) instead of the chat")
    srv.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (the default accepts local connections only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--max-waiting", type=int, default=8,
                     help="requests that may wait for the model; more get HTTP 429")
    srv.add_argument("--quiet", action="store_true", help="no request log")
    return p


def checked(params: SamplingParams) -> SamplingParams:
    """`params`, if chat allows them: the same cap on a reply's length as the server's."""
    if params.max_new_tokens > MAX_NEW_TOKENS:
        raise ValueError(f"max_new_tokens must be in [0, {MAX_NEW_TOKENS}], got "
                         f"{params.max_new_tokens}")
    return params


def sampling_params(args: argparse.Namespace, defaults: dict | None = None,
                    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> SamplingParams:
    """The command line's sampling settings; those it does not give come from `defaults`
    (a checkpoint's), then DEFAULT_SAMPLING."""
    given = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    value = {key: given[key] if given[key] is not None
             else (defaults or {}).get(key, DEFAULT_SAMPLING[key]) for key in given}
    try:
        return checked(SamplingParams(
            max_new_tokens=args.max_new_tokens if args.max_new_tokens is not None
            else max_new_tokens,
            temperature=value["temperature"], top_k=value["top_k"] or None,
            top_p=None if value["top_p"] >= 1.0 else value["top_p"],
            repetition_penalty=args.repetition_penalty, seed=args.seed))
    except ValueError as error:
        raise ChatError(str(error)) from None


def _date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def main(argv: list[str] | None = None, stdin: TextIO | None = None,
         stdout: TextIO | None = None) -> int:
    """chat.py's main: parse the command line, load the model, chat or serve. Bad settings
    print one `error:` line and return 1 (wrap in gpt.cli.fail_cleanly for the rest)."""
    try:
        return _main(argv, stdin, stdout)
    except ChatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _main(argv: list[str] | None, stdin: TextIO | None, stdout: TextIO | None) -> int:
    args = build_parser().parse_args(argv)
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    sampling_params(args)                       # bad settings fail before the model loads
    if args.serve and not 0 <= args.port <= 65535:
        raise ChatError(f"--port must be in 0..65535, got {args.port}")
    if args.threads is not None and args.threads < 1:
        raise ChatError(f"--threads must be at least 1, got {args.threads}")
    options = TemplateOptions(enable_thinking=not args.no_thinking, date=args.date)
    engine = ChatEngine.from_checkpoint(find_checkpoint(args.ckpt, args.out_dir), args.template,
                                        max_waiting=args.max_waiting, options=options)
    thinks = engine.template.thinking and options.enable_thinking
    params = sampling_params(args, engine.sampling_defaults,
                             THINKING_MAX_NEW_TOKENS if thinks else DEFAULT_MAX_NEW_TOKENS)
    # A Llama-family model sets BLAS's thread count itself (for a decode step) and splits a
    # prefill over threads of its own: its count must be set, or --threads 1 still runs one
    # per core.
    if args.threads and hasattr(engine.model, "inference_threads"):
        engine.model.inference_threads = args.threads
    # OpenBLAS's thread count is one setting for the whole process, changed here for the run.
    threads = limit_blas_threads(args.threads) if args.threads else nullcontext(True)
    with threads as limited:
        if not limited:
            print(f"note: cannot tell this BLAS library how many threads to use; set "
                  f"OPENBLAS_NUM_THREADS={args.threads} instead", file=sys.stderr)
        if args.serve:
            serve(engine, args.host, args.port, default_max_tokens=params.max_new_tokens,
                  log=not args.quiet)
            return 0
        session = ChatSession(engine, params, system=args.system)
        return run_terminal(session, stdin, stdout, interactive=stdin.isatty())


def run_terminal(session: ChatSession, stdin: TextIO, stdout: TextIO,
                 interactive: bool) -> int:
    """The read-reply loop. Returns the exit status: 1 if a piped message failed, else 0."""
    engine = session.engine
    if interactive:
        try:
            import readline  # noqa: F401  (optional: line editing and history for input())
        except ImportError:
            pass
        n_params = sum(p.data.size for p in engine.model.parameters())
        _note(f"{engine.name}: {n_params / 1e6:.1f}M parameters, context "
              f"{engine.context_length} tokens, {engine.template.name} template. "
              f"/help for commands.")
    failed = False
    while True:
        try:
            line = input("you> ") if interactive else stdin.readline()
        except EOFError:                        # Ctrl-D
            if interactive:
                print(file=stdout)
            break
        except KeyboardInterrupt:               # Ctrl-C at the prompt: a fresh line, as a shell
            if not interactive:
                break
            print("\n(Ctrl-D or /quit to leave)", file=stdout)
            continue
        if not interactive and not line:
            break                               # end of input
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.startswith("/") and text.split()[0] not in SOFT_SWITCHES:
            if not _command(session, text.strip()):
                break
            continue
        try:
            reply = session.send(text)
        except ChatError as error:
            _note(f"error: {error}")
            failed = True
            continue
        printer = ReplyPrinter(stdout, show_thinking=interactive,
                               dim=interactive and stdout.isatty())
        try:
            for piece in reply:
                printer.write(piece)
        except KeyboardInterrupt:
            reply.close()
            printer.close()
            stdout.write(" [stopped]")
        else:
            printer.close()
        stdout.write("\n")
        stdout.flush()
    return 1 if failed and not interactive else 0


class ReplyPrinter:
    """Writes a reply as it streams in. A reasoning part (<think>...</think> first) is shown
    before the answer, dimmed on a terminal, or left out (show_thinking=False); the answer is
    written as it comes."""

    DIM, PLAIN = "\x1b[2m", "\x1b[0m"

    def __init__(self, stdout: TextIO, show_thinking: bool, dim: bool):
        self.stdout = stdout
        self.show_thinking = show_thinking
        self.dim = dim
        self.text = ""                        # the reply so far
        self.shown_reasoning = 0              # characters of each part already written
        self.shown_answer = 0

    def write(self, piece: str) -> None:
        self.text += piece
        if "<think>".startswith(self.text.lstrip()):
            return                             # might still become <think>: wait and see
        reasoning, answer, thinking = split_thinking(self.text)
        if reasoning and self.show_thinking:
            new = reasoning[self.shown_reasoning:]
            if new:
                self._out(new, self.dim)
            self.shown_reasoning = len(reasoning)
        if thinking:
            return
        if reasoning and self.show_thinking and self.shown_answer == 0 and answer:
            self._out("\n\n", False)
        self._out(answer[self.shown_answer:], False)
        self.shown_answer = len(answer)

    def close(self) -> None:
        """The reply is over: write what was held back in case it began a <think>."""
        held = self.text.lstrip()
        if held and held != "<think>" and "<think>".startswith(held):
            self._out(self.text, False)

    def _out(self, text: str, dim: bool) -> None:
        if not text:
            return
        self.stdout.write(f"{self.DIM}{text}{self.PLAIN}" if dim else text)
        self.stdout.flush()


def _command(session: ChatSession, text: str) -> bool:
    """Run a slash command; False means quit."""
    name, _, value = text.partition(" ")
    value = value.strip()
    setters = {"/temp": ("temperature", float), "/temperature": ("temperature", float),
               "/top_k": ("top_k", int), "/top_p": ("top_p", float),
               "/max": ("max_new_tokens", int)}
    if name in ("/quit", "/exit", "/q"):
        return False
    if name == "/help":
        _note(HELP)
    elif name == "/reset":
        session.reset()
        _note("(conversation forgotten)")
    elif name == "/settings":
        _note(_settings(session.params))
    elif name in setters:
        field, kind = setters[name]
        try:
            number = kind(value)
            if field == "top_k" and number == 0:
                number = None
            elif field == "top_p" and number == 1.0:
                number = None
            session.params = checked(replace(session.params, **{field: number}))
        except ValueError as error:
            reason = str(error) if value else "it needs a value"
            _note(f"error: {name} {value}: {reason}".rstrip())
            return True
        _note(_settings(session.params))
    else:
        _note(f"unknown command {name}; /help lists them")
    return True


def _settings(p: SamplingParams) -> str:
    return (f"(temperature {p.temperature:g}, top_k {p.top_k or 'off'}, "
            f"top_p {p.top_p if p.top_p is not None else 'off'}, max {p.max_new_tokens} tokens)")


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

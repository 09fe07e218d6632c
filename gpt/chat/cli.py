"""The command line behind chat.py: a terminal chat, or the HTTP server with --serve.

    python chat.py                          # the newest run train.py wrote (under runs/)
    python chat.py --ckpt runs/20261125-120000
    python chat.py --ckpt gpt2              # GPT-2 downloaded with `python -m gpt.download gpt2`
    echo "Once upon a time" | python chat.py --temperature 0 --max-new-tokens 50
    python chat.py --serve --port 8000      # the OpenAI-style API and the web page

Interactive, the reply is printed token by token as it is generated. Piped, every input line
is one message and stdout holds only the replies (one per message, each ending in a newline),
so the chat can be scripted; messages, errors and slash-command answers go to stderr.
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from autograd.parallel import limit_blas_threads
from gpt.chat.engine import ChatEngine, ChatSession
from gpt.chat.server import serve
from gpt.chat.templates import TEMPLATES, ChatError
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
Ctrl-C stops a reply early; the part already written stays in the conversation."""


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
                   help="checkpoint or run directory, a Hugging Face GPT-2 directory, or "
                        "'gpt2' (downloaded); default: the newest run in --out-dir")
    p.add_argument("--out-dir", default="runs", help="where train.py writes its runs")
    p.add_argument("--template", choices=sorted(TEMPLATES), default=None,
                   help="chat template (default: the one the checkpoint records, else base)")
    p.add_argument("--system", default=None, help="a system message (alpaca: replaces the "
                                                  "preamble; base: text before the chat)")
    s = p.add_argument_group("sampling")
    s.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=50, help="0 = no limit")
    s.add_argument("--top-p", type=float, default=1.0, help="1 = no nucleus cut")
    s.add_argument("--repetition-penalty", type=float, default=1.0)
    s.add_argument("--max-new-tokens", type=int, default=200,
                   help="per reply (with --serve: the default max_tokens of a chat request)")
    s.add_argument("--seed", type=int, default=None, help="make sampling repeatable")
    s.add_argument("--threads", type=int, default=None,
                   help="BLAS threads per matrix product (default: NumPy's, all cores); 1 is "
                        "much faster while another job keeps a core busy")
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


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    try:
        return checked(SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k or None,
                              top_p=None if args.top_p >= 1.0 else args.top_p,
                              repetition_penalty=args.repetition_penalty, seed=args.seed))
    except ValueError as error:
        raise ChatError(str(error)) from None


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
    params = sampling_params(args)
    if args.serve and not 0 <= args.port <= 65535:
        raise ChatError(f"--port must be in 0..65535, got {args.port}")
    if args.threads is not None and args.threads < 1:
        raise ChatError(f"--threads must be at least 1, got {args.threads}")
    engine = ChatEngine.from_checkpoint(find_checkpoint(args.ckpt, args.out_dir), args.template,
                                        max_waiting=args.max_waiting)
    # OpenBLAS's thread count is one setting for the whole process, changed here for the run.
    threads = limit_blas_threads(args.threads) if args.threads else nullcontext(True)
    with threads as limited:
        if not limited:
            print(f"note: cannot tell this BLAS library how many threads to use; set "
                  f"OPENBLAS_NUM_THREADS={args.threads} instead", file=sys.stderr)
        if args.serve:
            serve(engine, args.host, args.port, default_max_tokens=args.max_new_tokens,
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
        if text.startswith("/"):
            if not _command(session, text.strip()):
                break
            continue
        try:
            reply = session.send(text)
        except ChatError as error:
            _note(f"error: {error}")
            failed = True
            continue
        try:
            for piece in reply:
                stdout.write(piece)
                stdout.flush()
        except KeyboardInterrupt:
            reply.close()
            stdout.write(" [stopped]")
        stdout.write("\n")
        stdout.flush()
    return 1 if failed and not interactive else 0


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

"""Does the storyteller do what it is asked? Requests made from held-out stories, and what the
replies contain, against the pretrained model the storyteller was fine-tuned from.

    python benchmarks/storyteller.py                     # the newest run under runs/
    python benchmarks/storyteller.py --run runs/RUN --n 200 --json storyteller.json

The requests come from the validation stories of the run's corpus (TinyStories' valid.txt by
default), which neither pretraining nor the chat stage ever trains on: for each story,
`gpt.data.conversations.make_benchmark_requests` writes a request for facts the story holds
("Tell me a story about a dog named Max with the word ball."). Every reply is scored with
`check_reply`, the same word matching that made the request:

- name: the share of requested names the reply uses (exact case, "Max's" counts);
- kind, words, mood: the same for requested kinds of character ("dog"), words ("ball", any
  regular form), and moods or endings (a happy ending, becoming friends: keyword rules);
- all asked: the share of replies that meet every fact their request asked for;
- ends properly: the share of replies that end with the end-of-turn token (<|end|>) before the
  token limit (for the pretrained model: <|endoftext|>, the end of a story);
- tokens: the mean length of a reply, in tokens.

Each model answers twice: greedy, and sampled at temperature 0.8 (top-k 50, a fixed seed per
request). The pretrained model gets no request, only the opening it would need to write the
same story: "Once upon a time, there was a <kind> named <Name>" (or the parts of it the
request names, else "Once upon a time,"), and only what it writes after that is scored. Its
figures say how often a continuation happens to hold the facts; the difference is what the
fine-tuning adds. A few replies are printed unedited.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

# The repository first: this directory's bpe.py would otherwise shadow the bpe package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autograd.parallel import limit_blas_threads  # noqa: E402
from gpt.chat.engine import ChatEngine  # noqa: E402
from gpt.core.generate import SamplingParams, generate_tokens  # noqa: E402
from gpt.data.conversations import (RequestFacts, check_reply,  # noqa: E402
                                    make_benchmark_requests, read_stories)
from gpt.data.corpora import load_text_splits  # noqa: E402
from gpt.errors import GPTError  # noqa: E402
from gpt.finetune.stories import PRETRAINED_DIR, stories_of  # noqa: E402
from gpt.io.checkpoint import latest_run, resolve_checkpoint  # noqa: E402

DECODINGS = {"greedy": dict(temperature=0.0), "sampled": dict(temperature=0.8, top_k=50)}
FACTS = ("name", "kind", "word", "mood")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", default=None,
                   help="a run of python train.py (default: the newest under runs/)")
    p.add_argument("--ckpt", default=None, help="the storyteller (default: the run's best/)")
    p.add_argument("--pretrained", default=None,
                   help=f"the pretrained-only model (default: the run's {PRETRAINED_DIR}/; "
                        f"'none' to skip it)")
    p.add_argument("--data", default=None,
                   help="corpus whose validation stories make the requests (default: the "
                        "run's corpus)")
    p.add_argument("--stories", default=None,
                   help="a file of held-out stories (each followed by <|endoftext|>) instead")
    p.add_argument("--n", type=int, default=100, help="requests")
    p.add_argument("--max-new-tokens", type=int, default=300, help="per reply")
    p.add_argument("--samples", type=int, default=3, help="replies to print unedited")
    p.add_argument("--seed", type=int, default=0, help="requests and sampling")
    p.add_argument("--threads", type=int, default=None, help="BLAS threads")
    p.add_argument("--json", default=None, help="write every reply and the figures here")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Replies


def write(engine: ChatEngine, prompt_ids: list[int], params: SamplingParams,
          end_id: int) -> dict:
    """Generate until a stop token or the limit: the text, its length, and whether it ended
    with `end_id` (the token that means "this reply is complete")."""
    stops = set(engine.stop_tokens())
    tokens, ended = [], None
    generation = generate_tokens(engine.model, prompt_ids,
                                 replace(params, stop_tokens=(),
                                         vocab_size=engine.tokenizer.vocab_size))
    try:
        for token in generation:
            if token in stops:
                ended = token
                break
            tokens.append(token)
    finally:
        generation.close()
    return {"text": engine.tokenizer.decode(tokens), "tokens": len(tokens),
            "ends": ended == end_id}


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def story_opening(facts: RequestFacts) -> str:
    """The pretrained model's prompt: "Once upon a time, there was a dog named Max", or what
    of it the request names."""
    name, kind = (facts.names or (None,))[0], (facts.kinds or (None,))[0]
    if name and kind:
        return f"Once upon a time, there was {_article(kind)} named {name}"
    if name:
        return f"Once upon a time, there was someone named {name}"
    if kind:
        return f"Once upon a time, there was {_article(kind)}"
    return "Once upon a time,"


def score(replies: list[dict]) -> dict[str, float]:
    """The shares described in the module docstring, over `replies` (each with "checks")."""
    out = {}
    for fact in FACTS:
        checks = [ok for r in replies for key, ok in r["checks"].items()
                  if key.startswith(fact + ":")]
        out[fact] = sum(checks) / len(checks) if checks else float("nan")
    out["all asked"] = sum(all(r["checks"].values()) for r in replies) / len(replies)
    out["ends properly"] = sum(r["ends"] for r in replies) / len(replies)
    out["tokens"] = sum(r["tokens"] for r in replies) / len(replies)
    return out


def answer_all(engine: ChatEngine, requests, chat: bool, max_new_tokens: int,
               seed: int) -> dict[str, list[dict]]:
    """Every request answered in each decoding: {decoding: [reply, ...]}."""
    specials = engine.tokenizer.special_tokens
    end_id = specials["<|end|>"] if chat else engine.eot_id
    out: dict[str, list[dict]] = {}
    for decoding, sampling in DECODINGS.items():
        replies = []
        for index, request in enumerate(requests):
            params = SamplingParams(max_new_tokens=max_new_tokens, seed=seed + index,
                                    **sampling)
            if chat:
                prompt = request.text
                ids, _ = engine.chat_prompt([{"role": "user", "content": prompt}],
                                            max_new_tokens)
            else:
                prompt = story_opening(request.facts)
                ids = engine.prompt_ids(prompt, start_with_eot=True)
            reply = write(engine, ids, params, end_id)
            reply.update(prompt=prompt, checks=check_reply(reply["text"], request.facts))
            replies.append(reply)
        out[decoding] = replies
    return out


# ----------------------------------------------------------------------------------------------
# The report


def table(results: dict[str, dict[str, list[dict]]]) -> str:
    header = ["model", "decoding", *FACTS, "all asked", "ends properly", "tokens"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, by_decoding in results.items():
        for decoding, replies in by_decoding.items():
            figures = score(replies)
            cells = [f"{figures[k]:.0%}" if figures[k] == figures[k] else "-"
                     for k in (*FACTS, "all asked", "ends properly")]
            lines.append(f"| {model} | {decoding} | " + " | ".join(cells)
                         + f" | {figures['tokens']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except GPTError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run) if args.run else latest_run("runs")
    if run_dir is None and args.ckpt is None:
        raise GPTError("no --run given and no run under runs/; train one with python train.py")
    storyteller = ChatEngine.from_checkpoint(args.ckpt or run_dir)
    if storyteller.template.name != "chat":
        raise GPTError(f"{resolve_checkpoint(args.ckpt or run_dir)} is not a storyteller (its "
                       f"chat template is {storyteller.template.name!r}, not 'chat')")
    models = {"storyteller": storyteller}
    pretrained = args.pretrained or (str(run_dir / PRETRAINED_DIR) if run_dir else None)
    if pretrained and pretrained != "none":
        if Path(pretrained).exists() or args.pretrained:
            models["pretrained"] = ChatEngine.from_checkpoint(pretrained, "base")
        else:
            print(f"note: no {pretrained}: the pretrained model is not measured", file=sys.stderr)

    data = args.data
    if data is None and run_dir is not None and (run_dir / "settings.json").is_file():
        data = json.loads((run_dir / "settings.json").read_text(encoding="utf-8")).get("data")
    data = data or "tinystories"
    if args.stories:
        stories, source = read_stories(args.stories), args.stories
    else:
        stories = stories_of(load_text_splits(data).val)
        source = f"the validation stories of {data}"
    requests = make_benchmark_requests(stories[:3 * args.n], seed=args.seed)[:args.n]
    if not requests:
        raise GPTError(f"{source}: no story gives a request to score")
    print(f"{len(requests)} requests from {source}; up to "
          f"{args.max_new_tokens} tokens per reply", file=sys.stderr)

    results: dict[str, dict[str, list[dict]]] = {}
    threads = limit_blas_threads(args.threads) if args.threads else nullcontext(True)
    with threads:
        for name, engine in models.items():
            started = time.perf_counter()
            results[name] = answer_all(engine, requests, name == "storyteller",
                                       args.max_new_tokens, args.seed)
            print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)

    print(table(results))
    for index, request in enumerate(requests[:args.samples]):
        print(f"\n### {request.text}\n(asks {_asked(request.facts)})")
        for name in results:
            reply = results[name]["greedy"][index]
            shown = reply["text"] if name == "storyteller" else reply["prompt"] + reply["text"]
            print(f"\n{name}, greedy{'' if reply['ends'] else ' (no end before the limit)'}:"
                  f"\n{shown.strip()}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "requests": [{"text": r.text, "facts": asdict(r.facts)} for r in requests],
            "figures": {m: {d: score(rs) for d, rs in by.items()} for m, by in results.items()},
            "replies": results}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


def _asked(facts: RequestFacts) -> str:
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in asdict(facts).items() if v)


if __name__ == "__main__":
    sys.exit(main())

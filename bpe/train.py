"""Learning BPE merges from a corpus, incrementally.

Byte-pair encoding starts with every chunk of text spelled as its UTF-8 bytes (token ids 0..255)
and repeats one step: find the adjacent pair of tokens that occurs most often in the corpus, give
it a new id, and replace every occurrence of the pair by that id. After ``n`` steps the
vocabulary has ``256 + n`` tokens and the list of merges, in order, *is* the tokenizer.

The textbook loop recounts every pair in the corpus at each step, which costs the size of the
corpus times the number of merges. Here the corpus is read once and everything after that is
proportional to what a merge actually changes:

1. Cut the text into chunks with the split pattern and count the *distinct* chunks. Tiny
   Shakespeare's 300,000 chunks are only 15,000 distinct ones; a chunk seen 500 times is stored
   once with a weight of 500. Memory is proportional to the distinct chunks, not the corpus.
2. Lay all distinct chunks end to end as one doubly linked list of symbols (so a merge can
   remove a symbol in O(1)), each symbol carrying its chunk's weight. Chunk ends are marked so
   that no pair straddles two chunks.
3. Keep ``counts[pair]`` (weighted number of occurrences) and ``where[pair]`` (positions of the
   pair's left symbol), and a heap ordered by count to find the best pair.
4. To merge ``(a, b) -> z``, visit only ``where[(a, b)]``. At each occurrence the pair's
   neighbours change: ``(x, a)`` becomes ``(x, z)`` and ``(b, y)`` becomes ``(z, y)``, so four
   counts move by the chunk's weight. Nothing else in the corpus is touched.

Every merge shortens the corpus by one symbol per occurrence, so the total work of all merges is
bounded by the number of symbols in the distinct chunks, however large the vocabulary.

The heap is lazy: when a count goes down its heap entry is left alone (it is now an upper bound),
and when such a stale entry reaches the top it is pushed back with its true count. When a count
goes up a fresh entry is pushed. So the top entry, once its count checks out, is the true best.

Tie-breaking: among pairs with the same count, the pair ``(a, b)`` with the smallest ``a``, then
the smallest ``b``, wins; in other words the pair whose left token is oldest (bytes before
merges, earlier merges before later ones). This depends only on the counts, never on the order of
the input, dictionary order or hash seeds, so training is deterministic.

Pair counts include overlapping occurrences (``"aaa"`` holds two ``(a, a)``), while a merge
replaces occurrences left to right without overlap (``"aaa"`` becomes ``"Za"``). This is the
usual convention, and the one whose results are quoted in the tests.
"""

from __future__ import annotations

import re
from collections import Counter
from heapq import heapify, heappop, heappush
from typing import Iterable, Mapping

import regex
from tqdm import tqdm

from .patterns import ascii_splitter, special_token_regex

# A pair (a, b) is packed into one int, a << ID_BITS | b: int dictionary keys hash and compare
# faster than tuples, and the heap key below can carry count and pair in one int.
ID_BITS = 20
MAX_VOCAB = 1 << ID_BITS
_ID_MASK = MAX_VOCAB - 1
_PAIR_BITS = 2 * ID_BITS
_PAIR_MASK = (1 << _PAIR_BITS) - 1


def _heap_key(count: int, pair: int) -> int:
    # heapq pops the smallest: negate the count for "most frequent first", and put the pair in
    # the low bits so equal counts fall back to the smallest (a, b).
    return (-count << _PAIR_BITS) | pair


def count_chunks(
    texts: str | Iterable[str],
    pattern: str | None,
    special_tokens: Iterable[str] = (),
) -> Counter[str]:
    """Count the distinct chunks of a text, or of every text in an iterable of texts.

    Special tokens are cut out first (they must never be learned as merges: ``<|endoftext|>``
    between stories is a marker, not text). Each piece between them is split by ``pattern``
    (a regex string, or None to keep the piece whole). An iterable is consumed one text at a time,
    so a large corpus can be streamed, e.g. a file object yields its lines.
    """
    if isinstance(texts, str):
        texts = (texts,)
    splitter = regex.compile(pattern) if pattern is not None else None
    fast_splitter = ascii_splitter(pattern)
    cutter = special_token_regex(special_tokens)
    counts: Counter[str] = Counter()
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"training text must be str, not {type(text).__name__}")
        for piece in cutter.splititer(text) if cutter is not None else (text,):
            # finditer, not findall: chunks are counted as they are found, never listed, so
            # memory follows the distinct chunks. map + Counter.update keep the loop in C.
            if fast_splitter is not None and piece.isascii():
                counts.update(map(re.Match.group, fast_splitter.finditer(piece)))
            elif splitter is not None:
                counts.update(map(regex.Match.group, splitter.finditer(piece)))
            elif piece:
                counts[piece] += 1
    return counts


def learn_merges(
    chunk_counts: Mapping[bytes, int],
    n_merges: int,
    first_id: int = 256,
    progress: bool = False,
) -> tuple[list[tuple[int, int]], list[int]]:
    """Learn up to ``n_merges`` merges from weighted chunks given as raw bytes.

    Returns ``(merges, counts)``: ``merges[i] = (a, b)`` is the pair that became token
    ``first_id + i``, and ``counts[i]`` how often it occurred when it was chosen (counts never
    increase from one merge to the next, so the list is "most frequent first"). Fewer merges come
    back if the corpus runs out of pairs.
    """
    if first_id + n_merges > MAX_VOCAB:
        raise ValueError(f"vocabulary too large: at most {MAX_VOCAB} tokens are supported")

    # The linked list of symbols over all distinct chunks. val[i] is the token at position i
    # (-1 once merged away), nxt/prv link positions within a chunk (-1 at chunk ends), wt[i] is
    # the weight of i's chunk.
    val: list[int] = []
    nxt: list[int] = []
    prv: list[int] = []
    wt: list[int] = []
    counts: dict[int, int] = {}
    where: dict[int, list[int]] = {}
    for chunk, weight in chunk_counts.items():
        start, n = len(val), len(chunk)
        if n == 0:
            continue
        val.extend(chunk)
        wt.extend([weight] * n)
        prv.append(-1)
        prv.extend(range(start, start + n - 1))
        nxt.extend(range(start + 1, start + n))
        nxt.append(-1)
        for i in range(start, start + n - 1):
            pair = val[i] << ID_BITS | val[i + 1]
            counts[pair] = counts.get(pair, 0) + weight
            if pair in where:
                where[pair].append(i)
            else:
                where[pair] = [i]

    heap = [_heap_key(c, p) for p, c in counts.items()]
    heapify(heap)
    merges: list[tuple[int, int]] = []
    merge_counts: list[int] = []
    bar = tqdm(total=n_merges, unit="merge", desc="BPE merges", disable=not progress)
    while len(merges) < n_merges and heap:
        top = heappop(heap)
        pair = top & _PAIR_MASK
        count = -(top >> _PAIR_BITS)
        true_count = counts.get(pair, 0)
        if true_count != count:
            if true_count > 0:
                heappush(heap, _heap_key(true_count, pair))
            continue
        a, b = pair >> ID_BITS, pair & _ID_MASK
        z = first_id + len(merges)
        merges.append((a, b))
        merge_counts.append(count)
        for key in _merge_pair(a, b, z, where.pop(pair), val, nxt, prv, wt, counts, where):
            c = counts.get(key, 0)
            if c > 0:
                heappush(heap, _heap_key(c, key))
        # Every occurrence of (a, b) was merged or swallowed by an overlapping merge.
        counts.pop(pair, None)
        bar.update(1)
    bar.close()
    return merges, merge_counts


def _merge_pair(
    a: int,
    b: int,
    z: int,
    positions: list[int],
    val: list[int],
    nxt: list[int],
    prv: list[int],
    wt: list[int],
    counts: dict[int, int],
    where: dict[int, list[int]],
) -> set[int]:
    """Replace each occurrence of (a, b) at ``positions`` by z; return the pairs that gained."""
    if a == b:
        # Only a pair with itself can overlap ("aaa"); left to right order decides which
        # occurrence wins, so visit positions in order.
        positions = sorted(positions)
    gained: set[int] = set()

    def move(old: int, new: int, w: int, pos: int) -> None:
        # One occurrence of `old` becomes one of `new` (with weight w) at position pos.
        c = counts[old] - w
        if c:
            counts[old] = c
        else:
            del counts[old]
        counts[new] = counts.get(new, 0) + w
        if new in where:
            where[new].append(pos)
        else:
            where[new] = [pos]
        gained.add(new)

    for i in positions:
        # `where` is never pruned, so check the pair is still here.
        if val[i] != a:
            continue
        j = nxt[i]
        if j < 0 or val[j] != b:
            continue
        w = wt[i]
        p = prv[i]
        if p >= 0:
            x = val[p]
            move(x << ID_BITS | a, x << ID_BITS | z, w, p)
        k = nxt[j]
        if k >= 0:
            y = val[k]
            move(b << ID_BITS | y, z << ID_BITS | y, w, i)
            prv[k] = i
        val[i] = z
        val[j] = -1
        nxt[i] = k
    return gained

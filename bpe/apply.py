"""Encoding one chunk: apply learned merges in the order they were learned.

Given a chunk spelled as byte tokens, encoding repeats: among all adjacent pairs that are in the
merge table, take the one learned *earliest* (lowest rank) and merge its occurrences left to
right. It stops when no adjacent pair is in the table. Following the training order matters:
merges learned later were learned on text in which the earlier ones had already happened, so
applying them in another order would give different (and longer) encodings.

Note that we never count pairs here; ranks alone decide. Since the merged id of the pair with
rank ``r`` is ``256 + r``, the tables below map a pair straight to its merged id and "lowest
rank" is simply "smallest merged id".

Two implementations give identical results:

- `merge_short`: keep the merged id of every adjacent pair in a list; take the smallest, merge
  it, update its two neighbours, repeat. Quadratic in the chunk length, but for the few bytes of
  a typical word the scans run inside C (``min``, ``list.index``, ``del``).
- `merge_long`: a heap of (merged id, position) over a linked list of symbols, O(n log n); used
  for long chunks (a long run of whitespace, or a text encoded with no split pattern), where the
  quadratic scan would crawl.

Neither compares merged ids with the ids of the parts, only with each other, so a table whose
values are any priorities (a tokenizer read from another project's files, see `bpe.pretrained`)
works as long as the merged symbols are numbered in priority order.

`encode_chunks` is the layer above: a text cut into chunks, each distinct chunk merged once and
remembered, since running text repeats the same words again and again.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush
from itertools import chain, repeat
from typing import Callable

#: Chunks longer than this many byte tokens go to `merge_long`.
LONG_CHUNK = 48

#: Remembered chunk encodings; past this many the memo is emptied and starts again.
CACHE_LIMIT = 1 << 18

_NONE = 1 << 62  # "not a merge": larger than every merged id


def apply_merges(ids: list[int], merged_id: dict[tuple[int, int], int]) -> list[int]:
    """Encode a chunk given as byte-token ids; ``merged_id[(a, b)]`` is the id (a, b) merges into."""
    return merge_long(ids, merged_id) if len(ids) > LONG_CHUNK else merge_short(ids, merged_id)


def encode_chunks(
    chunks: list[str], memo: dict[str, list[int]], encode_chunk: Callable[[str], list[int]]
) -> list[int]:
    """The ids of a text cut into ``chunks``: each chunk's ids, concatenated.

    ``encode_chunk`` is called once per chunk not yet in ``memo`` and its result remembered
    there, so in running text most chunks cost one dictionary lookup.
    """
    missing = set(chunks).difference(memo)
    if missing:
        if len(memo) + len(missing) > CACHE_LIMIT:
            memo.clear()
            missing = set(chunks)
        for chunk in missing:
            memo[chunk] = encode_chunk(chunk)
    # One C-level pass: look every chunk up and concatenate the results.
    ids = list(chain.from_iterable(map(memo.__getitem__, chunks)))
    for chunk in missing:
        # Long chunks (a text with no split pattern is one) are rarely seen twice and would
        # fill the memo; drop them.
        if len(chunk) > LONG_CHUNK:
            del memo[chunk]
    return ids


def merge_short(ids: list[int], merged_id: dict[tuple[int, int], int]) -> list[int]:
    """Rank-ordered merging by repeated scans; best for short chunks."""
    get = merged_id.get
    # candidates[i]: what the pair (ids[i], ids[i+1]) merges into, or _NONE.
    candidates = list(map(get, zip(ids, ids[1:]), repeat(_NONE)))
    ids = list(ids)
    while candidates:
        z = min(candidates)  # the earliest-learned merge available
        if z == _NONE:
            break
        # Leftmost first: with overlapping occurrences ("aaa") the left one wins, and the next
        # occurrence to its right is found by the next round's min (same z, so same rank).
        i = candidates.index(z)
        ids[i] = z
        del ids[i + 1]
        del candidates[i]
        # Only the two pairs touching the new token changed.
        if i < len(candidates):
            candidates[i] = get((z, ids[i + 1]), _NONE)
        if i > 0:
            candidates[i - 1] = get((ids[i - 1], z), _NONE)
    return ids


def merge_long(ids: list[int], merged_id: dict[tuple[int, int], int]) -> list[int]:
    """Rank-ordered merging with a heap; O(n log n) for a chunk of n byte tokens."""
    get = merged_id.get
    n = len(ids)
    if n < 2:
        return list(ids)
    val = list(ids)
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    # (merged id, position): the heap yields the earliest merge, leftmost first, which is the
    # order in which merge_short performs them.
    heap = [(z, i) for i, z in enumerate(map(get, zip(ids, ids[1:]))) if z is not None]
    heapify(heap)
    while heap:
        z, i = heappop(heap)
        if val[i] < 0:
            continue  # this symbol was merged into its left neighbour
        j = nxt[i]
        # The entry is stale if the pair at i has changed since it was pushed.
        if j < 0 or get((val[i], val[j])) != z:
            continue
        k = nxt[j]
        val[i] = z
        val[j] = -1
        nxt[i] = k
        if k >= 0:
            prv[k] = i
            right = get((z, val[k]))
            if right is not None:
                heappush(heap, (right, i))
        p = prv[i]
        if p >= 0:
            left = get((val[p], z))
            if left is not None:
                heappush(heap, (left, p))
    return [v for v in val if v >= 0]

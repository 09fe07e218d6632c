"""A team of threads that run one function side by side and meet at barriers.

    team = thread_team(2)
    results = team.run(lambda rank, meeting: work(rank, meeting))   # [work(0, ...), work(1, ...)]

Rank 0 runs in the calling thread, the others in the team's own threads, kept for the next
run. Inside `work`, `meeting.meet(rank)` waits until every rank has called it as many times:
a barrier. A large prefill of a Llama-family model splits each layer over the cores this way
(gpt/core/llama.py), with two barriers per layer, so what a barrier costs matters (loading
widens half-precision tensors on a team too, with no barrier: gpt/io/safetensors.py):
- a thread pool's round trip (submit, then wait for the result) wakes a sleeping thread twice,
  about 40-50 us on a virtual machine; a barrier between threads that are both running wakes
  one, and only when the other is not there yet;
- a barrier is one message to every other rank on a `queue.SimpleQueue` (C code, no Python
  lock objects), and reading messages until each other rank's count has caught up.
Counting per sender, not just messages, matters with three ranks or more: a fast rank can be
at the next barrier, and have sent for it, before a slow one has read the current one's.

If any rank raises, the others are told to stop: their next `meet` raises, the run waits for
all of them, and the first error is raised in the caller. Each run has its own queues, so a
run that stopped leaves nothing behind for the next.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable

_STOP = -1                       # a message that tells a rank to stop at its next barrier


class _Stopped(Exception):
    """Raised in a rank whose team stopped because another rank raised."""


class Meeting:
    """The barriers of one run: `meet(rank)` returns once every rank has met as often."""

    def __init__(self, ranks: int):
        self.ranks = ranks
        self._inboxes = [queue.SimpleQueue() for _ in range(ranks)]
        self._met = [0] * ranks                              # barriers each rank has reached
        self._heard = [[0] * ranks for _ in range(ranks)]    # [rank][sender]: messages read

    def meet(self, rank: int) -> None:
        if self.ranks == 1:
            return
        self._met[rank] += 1
        reached = self._met[rank]
        for other, inbox in enumerate(self._inboxes):
            if other != rank:
                inbox.put(rank)
        heard, inbox = self._heard[rank], self._inboxes[rank]
        for other in range(self.ranks):
            while other != rank and heard[other] < reached:
                sender = inbox.get()
                if sender == _STOP:
                    raise _Stopped
                heard[sender] += 1

    def stop(self) -> None:
        for inbox in self._inboxes:
            inbox.put(_STOP)


class ThreadTeam:
    """`ranks` threads for `run`: the caller's and ranks - 1 of the team's own (daemons)."""

    def __init__(self, ranks: int):
        if ranks < 1:
            raise ValueError(f"ThreadTeam: ranks must be at least 1, not {ranks}")
        self.ranks = ranks
        self._jobs = [queue.SimpleQueue() for _ in range(ranks)]   # rank 0's stays unused
        self._lock = threading.Lock()          # one run at a time
        for rank in range(1, ranks):
            threading.Thread(target=self._serve, args=(rank,), daemon=True,
                             name=f"team-{ranks}-{rank}").start()

    def run(self, work: Callable[[int, Meeting], Any]) -> list[Any]:
        """[work(rank, meeting) for every rank], run at the same time."""
        with self._lock:
            meeting, done = Meeting(self.ranks), queue.SimpleQueue()
            for rank in range(1, self.ranks):
                self._jobs[rank].put((work, meeting, done))
            results: list[Any] = [None] * self.ranks
            errors: list[BaseException] = []
            try:
                results[0] = work(0, meeting)
            except BaseException as error:              # KeyboardInterrupt included
                meeting.stop()
                errors.append(error)
            try:
                for _ in range(1, self.ranks):
                    rank, result, error = done.get()
                    results[rank] = result
                    if error is not None:
                        errors.append(error)
            except BaseException:                       # interrupted while waiting
                meeting.stop()
                raise
            real = [e for e in errors if not isinstance(e, _Stopped)]
            if real:
                raise real[0]
            return results

    def _serve(self, rank: int) -> None:
        while True:
            work, meeting, done = self._jobs[rank].get()
            try:
                done.put((rank, work(rank, meeting), None))
            except BaseException as error:
                meeting.stop()                  # rank 0 may be waiting at a barrier
                done.put((rank, None, error))


_teams: dict[int, ThreadTeam] = {}
_teams_lock = threading.Lock()


def thread_team(ranks: int) -> ThreadTeam:
    """The process's team of `ranks` threads, made on first use and kept."""
    with _teams_lock:
        if ranks not in _teams:
            _teams[ranks] = ThreadTeam(ranks)
        return _teams[ranks]

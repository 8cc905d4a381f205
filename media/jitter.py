"""Receive-side jitter buffer for 8 kHz G.711 RTP, sans I/O and pulled on time.

The media loop calls ``put`` for every decoded RTP packet as it arrives and ``pull``
exactly every 20 ms; ``pull`` always returns one ``frame_samples`` int16 frame, so
the loop's pacing never depends on the network.

Timeline: RTP timestamps are unwrapped (32-bit) into a monotonic sample clock, and
packets are stored as chunks of at most ``frame_samples`` keyed by that clock, so a
packet of any size lands where its timestamp says. The *playout point* is the clock
value of the next sample to play; every stored chunk starts at or after it, and
anything arriving behind it is late.

States:

* filling: silence (or the tail of a concealment) until ``target_frames`` are
  buffered, then playout starts at the earliest buffered sample. Entered at the
  start, after ``reset``, and whenever a frame is due while the buffer is empty
  (an underrun: refilling re-builds the cushion instead of stuttering).
* playing: each pull takes the frame at the playout point; a gap (lost or not yet
  arrived) is concealed by repeating the last real frame at half the level per
  repeat, for at most ``MAX_CONCEAL_FRAMES``, then silence.

``last_pull_real`` says whether the frame returned carried received audio, so the
VAD can ignore concealment and fill silence.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

import numpy as np

from media.speech import Pcm

MAX_CONCEAL_FRAMES = 3
CONCEAL_GAIN = 0.5  # per repeat: 0.5, 0.25, 0.125 of the last real frame

_SEQ_MOD = 1 << 16
_TS_MOD = 1 << 32
_SEEN_SEQUENCES = 512  # how many recent sequence numbers duplicate detection remembers


@dataclass(frozen=True, slots=True)
class JitterStats:
    received: int  # every packet given to put(), whatever became of it
    late: int  # arrived behind the playout point, dropped
    duplicates: int  # same sequence number and timestamp as a packet already seen
    concealed: int  # frames returned as an attenuated repeat of the last real frame
    overflowed: int  # chunks dropped, oldest first, because the buffer was full
    depth: int  # whole frames buffered now


def _unwrap(value: int, reference: int, modulus: int) -> int:
    """The integer congruent to ``value`` mod ``modulus`` that is nearest ``reference``."""
    delta = (value - reference) % modulus
    if delta >= modulus // 2:
        delta -= modulus
    return reference + delta


class JitterBuffer:
    def __init__(self, frame_samples: int = 160, target_frames: int = 3, max_frames: int = 50):
        if frame_samples <= 0:
            raise ValueError(f"frame_samples must be positive, got {frame_samples}")
        if not 1 <= target_frames <= max_frames:
            raise ValueError(
                f"need 1 <= target_frames <= max_frames, got {target_frames} and {max_frames}"
            )
        self.frame_samples = frame_samples
        self.target_frames = target_frames
        self.max_frames = max_frames
        self._received = 0
        self._late = 0
        self._duplicates = 0
        self._concealed = 0
        self._overflowed = 0
        self.last_pull_real = False
        self.reset()

    def reset(self) -> None:
        """Forget the stream (new SSRC, re-INVITE): back to filling. Counters are kept."""
        self._keys: list[int] = []  # sorted chunk start times (unwrapped samples)
        self._chunks: dict[int, Pcm] = {}
        self._buffered = 0  # samples held in _chunks
        self._playout: int | None = None  # next sample to play; None until first playout
        self._playing = False
        self._ts_ref: int | None = None  # highest unwrapped timestamp seen
        self._seq_ref: int | None = None  # highest unwrapped sequence number seen
        self._seen: dict[int, int] = {}  # unwrapped sequence -> raw timestamp
        self._seen_order: deque[int] = deque()
        self._last_real: Pcm | None = None
        self._conceal_run = 0
        self.last_pull_real = False

    @property
    def depth(self) -> int:
        return self._buffered // self.frame_samples

    @property
    def stats(self) -> JitterStats:
        return JitterStats(
            received=self._received,
            late=self._late,
            duplicates=self._duplicates,
            concealed=self._concealed,
            overflowed=self._overflowed,
            depth=self.depth,
        )

    # -- arrival ---------------------------------------------------------------------

    def put(self, sequence: int, timestamp: int, pcm: Pcm, *, copy: bool = True) -> None:
        """Store one decoded RTP packet (any number of samples); ``copy=False`` when the
        caller hands the array over (it will not reuse it)."""
        if not copy and self._put_next(sequence, timestamp, pcm):
            return
        self._received += 1
        sequence &= _SEQ_MOD - 1
        timestamp &= _TS_MOD - 1
        seq = sequence if self._seq_ref is None else _unwrap(sequence, self._seq_ref, _SEQ_MOD)
        if self._seen.get(seq) == timestamp:
            self._duplicates += 1
            return
        newer = self._seq_ref is None or seq > self._seq_ref
        ts = timestamp if self._ts_ref is None else _unwrap(timestamp, self._ts_ref, _TS_MOD)
        if (
            newer
            and self._playout is not None
            and ts < self._playout - self.max_frames * self.frame_samples
        ):
            # A newer packet far behind the playout point: the sender restarted its
            # timestamps without a new SSRC. Start a fresh timeline rather than drop
            # the rest of the call as late.
            self._restart_timeline()
            ts = timestamp
        self._remember(seq, timestamp)
        if newer:
            self._seq_ref = seq
        if self._ts_ref is None or ts > self._ts_ref:
            self._ts_ref = ts

        samples = np.array(pcm, dtype=np.int16).reshape(-1)  # own copy: callers reuse buffers
        if self._playout is not None and ts < self._playout:
            samples = samples[self._playout - ts :]
            ts = self._playout
            if samples.size == 0:
                self._late += 1
                return
        if samples.size == 0:
            return
        stored = False
        for start in range(0, samples.size, self.frame_samples):
            key = ts + start
            if key in self._chunks:
                continue  # already covered by an earlier packet
            bisect.insort(self._keys, key)
            chunk = samples[start : start + self.frame_samples]
            self._chunks[key] = chunk
            self._buffered += chunk.size
            stored = True
        if not stored:
            self._duplicates += 1
        self._enforce_capacity()

    def _put_next(self, sequence: int, timestamp: int, pcm: Pcm) -> bool:
        """The usual packet, fast: the next sequence number, one frame exactly after the
        newest timestamp, not behind the playout point. False: take the general path."""
        seq_ref, ts_ref = self._seq_ref, self._ts_ref
        size = self.frame_samples
        if seq_ref is None or ts_ref is None or pcm.size != size:
            return False
        if (sequence - seq_ref) & (_SEQ_MOD - 1) != 1:
            return False
        ts = ts_ref + size
        if (timestamp - ts) & (_TS_MOD - 1) or (self._playout is not None and ts < self._playout):
            return False
        self._received += 1
        seq = seq_ref + 1
        self._remember(seq, timestamp & (_TS_MOD - 1))
        self._seq_ref, self._ts_ref = seq, ts
        chunks = self._chunks
        if ts in chunks:
            self._duplicates += 1
            return True
        keys = self._keys
        if not keys or keys[-1] < ts:
            keys.append(ts)
        else:
            bisect.insort(keys, ts)
        chunks[ts] = pcm
        self._buffered += size
        if self._buffered > self.max_frames * size:
            self._enforce_capacity()
        return True

    def _remember(self, seq: int, timestamp: int) -> None:
        self._seen[seq] = timestamp
        self._seen_order.append(seq)
        if len(self._seen_order) > _SEEN_SEQUENCES:
            self._seen.pop(self._seen_order.popleft(), None)

    def _restart_timeline(self) -> None:
        self._keys.clear()
        self._chunks.clear()
        self._buffered = 0
        self._playout = None
        self._playing = False
        self._ts_ref = None

    def _enforce_capacity(self) -> None:
        limit = self.max_frames * self.frame_samples
        while self._buffered > limit:
            key = self._keys.pop(0)
            chunk = self._chunks.pop(key)
            self._buffered -= chunk.size
            self._overflowed += 1
            # Skip the playout point past what was dropped, or the next pulls would
            # conceal a hole the buffer made itself.
            end = key + chunk.size
            self._playout = end if self._playout is None else max(self._playout, end)

    # -- playout ---------------------------------------------------------------------

    def pull(self) -> Pcm:
        """The next frame: received audio, concealment, or silence. Call every 20 ms."""
        if not self._playing:
            if self.depth < self.target_frames:
                return self._fill_in()
            self._playing = True
            self._playout = self._keys[0]
        assert self._playout is not None
        frame = self._take(self._playout)
        if frame is None and self._keys:
            gap = self._keys[0] - self._playout
            if gap > self.max_frames * self.frame_samples:
                # The timestamps jumped ahead further than the buffer can hold: resync.
                self._playout = self._keys[0]
                frame = self._take(self._playout)
        if frame is None:
            if not self._keys:
                # Underrun: refill before playing again; the missing frame stays due,
                # so it is still accepted if it turns up.
                self._playing = False
                return self._fill_in()
            self._playout += self.frame_samples
            return self._fill_in()
        self._playout += self.frame_samples
        self._last_real = frame.copy()
        self._conceal_run = 0
        self.last_pull_real = True
        return frame

    def _take(self, start: int) -> Pcm | None:
        """Remove and return the samples in [start, start + frame), or None if none held."""
        end = start + self.frame_samples
        keys = self._keys
        hi = bisect.bisect_left(keys, end)
        if hi == 0:
            return None
        if hi == 1 and keys[0] == start and self._chunks[start].size == self.frame_samples:
            # The usual case: one whole, aligned packet.
            keys.pop(0)
            self._buffered -= self.frame_samples
            return self._chunks.pop(start)
        frame = np.zeros(self.frame_samples, dtype=np.int16)
        for key in keys[:hi]:
            chunk = self._chunks.pop(key)
            self._buffered -= chunk.size
            used = min(chunk.size, end - key)
            frame[key - start : key - start + used] = chunk[:used]
            if used < chunk.size and end not in self._chunks:
                rest = chunk[used:]  # the part that belongs to the next frame
                self._chunks[end] = rest
                self._buffered += rest.size
        del keys[:hi]
        if end in self._chunks and (not keys or keys[0] != end):
            keys.insert(0, end)
        return frame

    def _fill_in(self) -> Pcm:
        """Concealment while it lasts, then silence."""
        self.last_pull_real = False
        if self._last_real is not None and self._conceal_run < MAX_CONCEAL_FRAMES:
            self._conceal_run += 1
            self._concealed += 1
            gain = CONCEAL_GAIN**self._conceal_run
            return (self._last_real * gain).astype(np.int16)
        return np.zeros(self.frame_samples, dtype=np.int16)

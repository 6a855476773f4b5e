"""The README's "Use from Python" examples run as written, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Use from Python\n")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.DOTALL)


def test_the_section_has_the_promised_examples():
    code = "\n".join(python_blocks())
    for call in ("train(", "evaluate_languages(", "compute_measure(", "criterion=", "run_study(", "export_run("):
        assert call in code, call


def test_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for i, block in enumerate(python_blocks()):
        # compiled under its own name: a failure's traceback says which block
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "'de'" in out and "entailment" in out
    assert (tmp_path / "runs" / "tiny" / "config.json").is_file()
    assert (tmp_path / "tiny-xnli" / "model.safetensors").is_file()
    assert (tmp_path / "studies" / "tiny" / "study.sqlite").is_file()

"""TARGET resolution: what is a local path (must exist) and what is a Hub id; a missing path is never looked up."""

from __future__ import annotations

import socket

import pytest

from xlgm.cli import main
from xlgm.core.errors import XlgmError
from xlgm.runs import ResolvedTarget, looks_like_path, resolve_target


@pytest.mark.parametrize(
    "target",
    [
        "bert-base-multilingual-cased",
        "google/mt5-base",
        "xlm-roberta-base",
        "intfloat/multilingual-e5-small",
        "embedded",
    ],
)
def test_hub_ids_and_names_are_not_paths(target, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not looks_like_path(target)
    assert resolve_target(target) == ResolvedTarget(target)


@pytest.mark.parametrize(
    "target",
    [
        "./run",
        "../run",
        "/no/such/run",
        "~/no-such-xlgm-run",
        ".",
        "a/b/c",
        "runs/e5-adamw-typo/",
        "my run",
        "runs\\e5",
        "org/../name",
    ],
)
def test_path_like_targets(target):
    assert looks_like_path(target)


def test_a_relative_path_under_a_local_folder_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not looks_like_path("runs/e5-adamw-typo")  # no runs/ here: it could be a Hub org
    (tmp_path / "runs").mkdir()
    assert looks_like_path("runs/e5-adamw-typo")
    with pytest.raises(XlgmError, match=r"^runs/e5-adamw-typo: no such run or model folder$"):
        resolve_target("runs/e5-adamw-typo")


def test_existing_folders_and_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert resolve_target("model") == ResolvedTarget("model")  # a model folder, named as given
    assert resolve_target(str(tmp_path / "model")) == ResolvedTarget(str(tmp_path / "model"))
    with pytest.raises(XlgmError, match="notes.txt: not a folder"):
        resolve_target("notes.txt")


def test_a_mistyped_run_is_reported_at_once_without_the_network(tmp_path, monkeypatch, capsys):
    import xlgm.models.load as load_module

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    def no_loading(*args, **kwargs):
        raise AssertionError("a model load (a Hub lookup) was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(load_module, "load_classifier", no_loading)
    monkeypatch.setattr(load_module, "load_tokenizer", no_loading)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for argv in (
        ["evaluate", "runs/e5-adamw-typo"],
        ["measure", "runs/e5-adamw-typo"],
        ["evaluate", "./e5-adamw-typo", "--checkpoint", "last"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == f"xlgm: error: {argv[1]}: no such run or model folder\n"

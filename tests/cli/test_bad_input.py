"""Bad input on the command line or in a spec: one line on stderr, exit 2, no traceback, nothing stored changed.

Every case runs `xlgm.cli.main(argv)` in this process against one tiny trained run (trained, evaluated and
measured once per module) and a fresh folder of its own. A case is a `Case`: its argv (with `{run}`, `{tmp}`
and `{model}` filled in), a fragment the error line must contain, and an optional `setup` that writes files
into the case's folder first. To add a case, append one to CASES.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from xlgm.cli import main
from xlgm.core.errors import XlgmError
from xlgm.data.tasks import XNLI
from xlgm.recipes.train import TrainConfig, train
from xlgm.study.lock import study_lock

SPEC = """\
name: bad
model: MODEL
target_languages: [de]
train: {epochs: 1, batch_size: 8, max_train_examples: 32, max_length: 64}
grid: [adamw]
seeds: [0]
evaluation: {max_examples: 8, batch_size: 8}
measures: {names: [margin], data: {max_examples: 16, batch_size: 8}}
"""


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    expect: str  # a fragment of the one error line
    setup: Callable[[Path], None] | None = None  # writes into the case's folder before the command runs
    chdir: bool = False  # run from the case's folder (for relative TARGETs)
    run_setup: Callable[[Path, Path], None] | None = None  # (folder, the tiny run): for cases on a copy of it


def spec_with(old: str, new: str) -> Callable[[Path], None]:
    """A setup writing bad.yaml: the valid SPEC with `old` replaced by `new`."""
    assert old in SPEC, old

    def write(folder: Path) -> None:
        (folder / "bad.yaml").write_text(SPEC.replace(old, new, 1).replace("MODEL", str(folder / "model")))

    return write


def malformed_tsv(folder: Path) -> None:
    data = folder / "data"
    data.mkdir()
    for lang in XNLI.languages:
        (data / f"test-{lang}.tsv").write_text("a\tb\tentailment\n")
    (data / "test-de.tsv").write_text("a\tb\tentailment\nbroken line without tabs\n")


def write_file(name: str, text: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / name).write_text(text)

    return write


def make_dirs(*names: str) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        for name in names:
            (folder / name).mkdir(parents=True)

    return make


def train_case(name: str, flag: str, value: str, expect: str, **config) -> object:
    """`xlgm train` with one bad number (checked by TrainConfig through xlgm.core.validation)."""
    with pytest.raises(XlgmError):  # the config itself refuses it, not only the command line
        TrainConfig(**config)
    return pytest.param(
        Case(name, ("train", "--model", "{model}", flag, value, "--out", "{tmp}/new-run"), expect), id=name
    )


def copy_of_run(change: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    """A run_setup: the tiny run copied to `{tmp}/run`, then `change`d there (the original stays as it is)."""

    def setup(folder: Path, run: Path) -> None:
        shutil.copytree(run, folder / "run")
        change(folder / "run")

    return setup


def unfinished(run: Path) -> None:
    state = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps({**state, "finished": False}))


def truncated_checkpoint(run: Path) -> None:
    index = json.loads((run / "checkpoints.json").read_text())
    weights = run / "checkpoints" / index["best"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


def flipped_tensor_bytes(run: Path) -> None:
    """Bytes flipped inside the best checkpoint's tensors, its header intact: a readable file of wrong weights."""
    index = json.loads((run / "checkpoints.json").read_text())
    weights = run / "checkpoints" / index["best"] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # past the header
    data[start + 100 : start + 116] = bytes(b ^ 0xFF for b in data[start + 100 : start + 116])
    weights.write_bytes(bytes(data))


def pickle_only_model(folder: Path, run: Path) -> None:
    model = folder / "pickled"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    (model / "pytorch_model.bin").write_bytes(b"a pickle that must never be opened")


HELD_LOCKS = contextlib.ExitStack()  # locks a case holds as if another `study run` were working


def held_study_lock(folder: Path) -> None:
    spec_with("seeds: [0]", "seeds: [0]")(folder)
    (folder / "study").mkdir()
    HELD_LOCKS.enter_context(study_lock(folder / "study"))


EVALUATE = ("evaluate", "{run}")
MEASURE = ("measure", "{run}", "--measures", "margin")
STUDY_RUN = ("study", "run", "{tmp}/bad.yaml", "--out", "{tmp}/study")

CASES = [
    # row limits, lengths, batch sizes, seeds
    Case("evaluate-max-examples-0", (*EVALUATE, "--max-examples", "0"), "--max-examples: expected an integer >= 1"),
    Case(
        "evaluate-max-examples-negative",
        (*EVALUATE, "--max-examples", "-3"),
        "--max-examples: expected an integer >= 1, got -3",
    ),
    Case("evaluate-max-length-0", (*EVALUATE, "--max-length", "0"), "--max-length: expected an integer >= 8, got 0"),
    Case("evaluate-max-length-negative", (*EVALUATE, "--max-length", "-5"), "--max-length: expected an integer >= 8"),
    Case("evaluate-max-length-7", (*EVALUATE, "--max-length", "7"), "--max-length: expected an integer >= 8"),
    Case(
        "evaluate-max-length-beyond-model",
        (*EVALUATE, "--max-length", "100000"),
        "--max-length: 100000 is more than the model's 256 positions",
    ),
    Case("evaluate-batch-size-0", (*EVALUATE, "--batch-size", "0"), "--batch-size: expected an integer >= 1, got 0"),
    Case("evaluate-batch-size-negative", (*EVALUATE, "--batch-size", "-1"), "--batch-size: expected an integer >= 1"),
    Case("measure-max-examples-0", (*MEASURE, "--max-examples", "0"), "--max-examples: expected an integer >= 1"),
    Case(
        "measure-max-examples-negative", (*MEASURE, "--max-examples", "-1"), "--max-examples: expected an integer >= 1"
    ),
    Case("measure-batch-size-0", (*MEASURE, "--batch-size", "0"), "--batch-size: expected an integer >= 1"),
    Case("measure-seed-negative", (*MEASURE, "--seed", "-1"), "--seed: expected an integer >= 0, got -1"),
    Case("measure-max-length-4", (*MEASURE, "--max-length", "4"), "--max-length: expected an integer >= 8"),
    Case(
        "measure-max-length-beyond-model",
        (*MEASURE, "--max-length", "4096"),
        "--max-length: 4096 is more than the model's 256 positions",
    ),
    # languages and data
    Case("evaluate-languages-comma", (*EVALUATE, "--languages", ","), "--languages: expected a non-empty list"),
    Case("evaluate-languages-blank", (*EVALUATE, "--languages", "en,,de"), "--languages: expected a non-empty list"),
    Case("evaluate-unknown-language", (*EVALUATE, "--languages", "en,klingon"), "unknown language code 'klingon'"),
    Case(
        "evaluate-language-typo",
        (*EVALUATE, "--languages", "en,ge"),
        "unknown language code 'ge' for task xnli (did you mean 'de'?)",
    ),
    Case("unknown-command", ("mesure",), "invalid choice: 'mesure' (did you mean 'measure'?)"),
    Case(
        "evaluate-missing-data-dir", (*EVALUATE, "--data-dir", "{tmp}/no-such-data"), "no-such-data: expected a folder"
    ),
    Case(
        "evaluate-malformed-tsv",
        (*EVALUATE, "--data-dir", "{tmp}/data"),
        "data/test-de.tsv:2: expected 3 tab-separated",
        setup=malformed_tsv,
    ),
    Case("evaluate-bundled-train-split", (*EVALUATE, "--split", "train"), "the bundled train split is en only"),
    Case("evaluate-other-task", (*EVALUATE, "--task", "pawsx"), "was trained on xnli, not pawsx"),
    Case("measure-data-no-split", (*MEASURE, "--data", "english"), "--data 'english': expected LANGUAGE-SPLIT"),
    Case("measure-data-bad-split", (*MEASURE, "--data", "en-holdout"), "expected LANGUAGE-SPLIT"),
    Case("measure-data-unknown-language", (*MEASURE, "--data", "xx-dev"), "unknown language code 'xx'"),
    # measures and their options
    Case("measure-unknown-measure", ("measure", "{run}", "--measures", "nope"), "unknown measure 'nope'"),
    Case(
        "measure-typo",
        ("measure", "{run}", "--measures", "margn"),
        "unknown measure 'margn' (did you mean 'margin'?); measures of a checkpoint: fisher-trace,",
    ),
    Case("measure-no-measure", ("measure", "{run}", "--measures", ","), "--measures: expected a non-empty list"),
    Case(
        "measure-outputs-measure",
        ("measure", "{run}", "--measures", "retrieval-accuracy"),
        "retrieval-accuracy is not a measure of one checkpoint",
    ),
    Case(
        "measure-set-unrequested",
        (*MEASURE, "--set", "sharpness-diff.num_draws=2"),
        "--set names measure(s) not requested: sharpness-diff",
    ),
    Case(
        "measure-set-unknown-option", (*MEASURE, "--set", "margin.nope=1"), "unknown option(s) nope for measure margin"
    ),
    Case("measure-bad-params-regex", (*MEASURE, "--params", "("), "--params: expected a regular expression"),
    Case(
        "measure-out-not-measures",
        (*MEASURE, "--out", "{tmp}/notes.json"),
        "not valid JSON",
        setup=write_file("notes.json", "my notes, not JSON\n"),
    ),
    Case(
        "measure-out-json-not-records",
        (*MEASURE, "--out", "{tmp}/other.json"),
        "other.json: expected a JSON list",
        setup=write_file("other.json", '{"a": 1}\n'),
    ),
    Case("measure-no-target", ("measure", "--measures", "margin"), "xlgm measure needs a TARGET"),
    # devices and precision
    Case(
        "evaluate-device-unknown",
        (*EVALUATE, "--device", "tpu"),
        "--device: expected one of auto, cpu, cuda, cuda:N, mps",
    ),
    Case("evaluate-device-absent-gpu", (*EVALUATE, "--device", "cuda:99"), "--device cuda:99"),
    Case("measure-device-unknown", (*MEASURE, "--device", "gpu0"), "--device: expected one of"),
    Case("predict-device-unknown", ("predict", "{tmp}/study", "--device", "tpu"), "--device: expected one of"),
    Case(
        "evaluate-precision-unknown",
        (*EVALUATE, "--mixed-precision", "fp8"),
        "argument --mixed-precision: invalid choice",
    ),
    # flags argparse rejects
    Case(
        "evaluate-max-length-not-a-number", (*EVALUATE, "--max-length", "abc"), "--max-length: invalid int value: 'abc'"
    ),
    Case("evaluate-no-target", ("evaluate",), "the following arguments are required: target"),
    # TARGETs that look like paths and do not exist: no Hub lookup
    Case(
        "evaluate-mistyped-run",
        ("evaluate", "runs/e5-adamw-typo"),
        "runs/e5-adamw-typo: no such run or model folder",
        setup=make_dirs("runs"),
        chdir=True,
    ),
    Case(
        "evaluate-missing-dot-path", ("evaluate", "./runs-typo"), "./runs-typo: no such run or model folder", chdir=True
    ),
    Case("measure-missing-absolute-path", ("measure", "{tmp}/no-run"), "no-run: no such run or model folder"),
    Case("evaluate-missing-checkpoint", ("evaluate", "{run}/checkpoints/step-999"), "no such run or model folder"),
    Case("evaluate-target-is-a-file", ("evaluate", "{run}/config.json"), "config.json: not a folder"),
    # predict
    Case(
        "predict-text-without-language", ("predict", "{tmp}/study", "--text", "{tmp}/x.tsv"), "--text needs --language"
    ),
    Case("predict-no-study", ("predict", "{tmp}/no-study"), "no-study: file not found"),
    Case(
        "predict-bad-spec",
        ("predict", "{tmp}/bad.yaml"),
        "bad.yaml:6: seeds[0]: expected an integer >= 0, got -1",
        setup=spec_with("seeds: [0]", "seeds: [-1]"),
    ),
    # the same numbers in a spec
    Case(
        "spec-evaluation-max-length-0",
        STUDY_RUN,
        "bad.yaml:7: evaluation.max_length: expected an integer >= 8, got 0",
        setup=spec_with("max_examples: 8,", "max_examples: 8, max_length: 0,"),
    ),
    Case(
        "spec-evaluation-max-examples-negative",
        STUDY_RUN,
        "bad.yaml:7: evaluation.max_examples: expected an integer >= 1, got -1",
        setup=spec_with("max_examples: 8,", "max_examples: -1,"),
    ),
    Case(
        "spec-evaluation-batch-size-0",
        STUDY_RUN,
        "bad.yaml:7: evaluation.batch_size: expected an integer >= 1",
        setup=spec_with("batch_size: 8}\nmeasures", "batch_size: 0}\nmeasures"),
    ),
    Case(
        "spec-measures-max-examples-0",
        STUDY_RUN,
        "bad.yaml:8: measures.data.max_examples: expected an integer >= 1",
        setup=spec_with("max_examples: 16", "max_examples: 0"),
    ),
    Case(
        "spec-seeds-negative",
        STUDY_RUN,
        "bad.yaml:6: seeds[0]: expected an integer >= 0, got -1",
        setup=spec_with("seeds: [0]", "seeds: [-1]"),
    ),
    Case(
        "spec-seeds-empty",
        STUDY_RUN,
        "bad.yaml:6: seeds: expected a non-empty list",
        setup=spec_with("seeds: [0]", "seeds: []"),
    ),
    Case(
        "spec-languages-empty",
        STUDY_RUN,
        "bad.yaml:3: target_languages: expected a non-empty list",
        setup=spec_with("target_languages: [de]", "target_languages: []"),
    ),
    Case(
        "spec-languages-comma",
        STUDY_RUN,
        "bad.yaml:3: target_languages: expected a non-empty list",
        setup=spec_with("target_languages: [de]", "target_languages: ','"),
    ),
    Case(
        "spec-train-max-length-0",
        STUDY_RUN,
        "bad.yaml:4: train.max_length: expected an integer >= 8, got 0",
        setup=spec_with("max_length: 64", "max_length: 0"),
    ),
    Case(
        "spec-train-max-train-examples-0",
        STUDY_RUN,
        "bad.yaml:4: train.max_train_examples: expected an integer >= 1",
        setup=spec_with("max_train_examples: 32", "max_train_examples: 0"),
    ),
    Case(
        "spec-grid-axis-max-length",
        STUDY_RUN,
        "bad.yaml:5: grid[0].max_length[1]: expected an integer >= 8, got -5",
        setup=spec_with("grid: [adamw]", "grid: [{objective: adamw, max_length: [64, -5]}]"),
    ),
    # train: the numbers TrainConfig checks
    Case(
        "train-batch-size-0", ("train", "--model", "{model}", "--batch-size", "0", "--out", "{tmp}/new-run"), "batch"
    ),  # TrainConfig names it `batch_size` or `--batch-size`
    train_case("train-max-train-examples-0", "--max-train-examples", "0", "--max-train-examples", max_train_examples=0),
    train_case(
        "train-max-train-examples-negative", "--max-train-examples", "-2", "--max-train-examples", max_train_examples=-2
    ),
    train_case("train-max-length-0", "--max-length", "0", "--max-length", max_length=0),
    train_case("train-seed-negative", "--seed", "-1", "--seed", seed=-1),
    # item 4: run folders are never overwritten or used half-trained without saying so
    Case("train-into-existing-run", ("train", "--model", "{model}", "--out", "{run}"), "pass --overwrite"),
    Case(
        "evaluate-unfinished-run",
        ("evaluate", "{tmp}/run"),
        "training did not finish",
        run_setup=copy_of_run(unfinished),
    ),
    Case(
        "measure-unfinished-run",
        ("measure", "{tmp}/run", "--measures", "margin"),
        "training did not finish",
        run_setup=copy_of_run(unfinished),
    ),
    # item 6: one `study run` per folder
    Case(
        "study-run-while-another-runs",
        ("study", "run", "{tmp}/bad.yaml", "--out", "{tmp}/study"),
        "is being run by pid",
        setup=held_study_lock,
    ),
    # item 8: a damaged checkpoint is one line
    Case(
        "evaluate-truncated-checkpoint",
        ("evaluate", "{tmp}/run"),
        "model.safetensors: truncated",
        run_setup=copy_of_run(truncated_checkpoint),
    ),
    # issue 25: bytes flipped inside a tensor fail the checksum the run recorded
    *(
        Case(
            f"{argv[0]}-flipped-tensor-bytes",
            argv,
            "model.safetensors: corrupt: its SHA-256 is",
            run_setup=copy_of_run(flipped_tensor_bytes),
        )
        for argv in (
            ("evaluate", "{tmp}/run"),
            ("measure", "{tmp}/run", "--measures", "margin", "--checkpoint", "best"),
            ("export", "{tmp}/run", "{tmp}/exported"),
        )
    ),
    # item 9: no silent random head
    Case("evaluate-base-model-without-head", ("evaluate", "{model}"), "has no trained classification head"),
    # item 10: nothing unpickled
    Case(
        "evaluate-pickle-only-model",
        ("evaluate", "{tmp}/pickled"),
        "holds only pytorch_model.bin (pickle)",
        run_setup=pickle_only_model,
    ),
    # item 11: the Fisher weight in one convention at a time
    Case(
        "train-fisher-lambda-and-weight",
        (
            "train",
            "--model",
            "{model}",
            "--objective",
            "fisher",
            "--fisher-lambda",
            "0.1",
            "--fisher-weight",
            "0.001",
            "--out",
            "{tmp}/new-run",
        ),
        "not allowed with argument",
    ),
]


def _case_id(case) -> str:
    return case.id


@pytest.fixture(scope="module")
def tiny_run(tiny_bert_dir, tmp_path_factory) -> Path:
    """A tiny trained run with an evaluation report and measures already stored (what must not change)."""
    config = TrainConfig(
        model=str(tiny_bert_dir), epochs=1, batch_size=16, max_train_examples=32, lr=1e-3, save_every=0, seed=0
    )
    run = train(config, tmp_path_factory.mktemp("run") / "run", show_progress=False)
    assert main(["evaluate", str(run), "--languages", "en,de", "--max-examples", "8", "--mixed-precision", "no"]) == 0
    assert main(["measure", str(run), "--measures", "margin", "--max-examples", "8"]) == 0
    assert {"eval-test.json", "measures.json", "results.sqlite"} <= {p.name for p in run.iterdir()}
    return run


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: its content hash and modification time."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach a server (a Hub lookup) fails the test instead of timing out."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bad_input_is_one_line_and_changes_nothing(
    case, tiny_run, tiny_bert_dir, tmp_path, capsys, monkeypatch, no_network, request
):
    folder = tmp_path / "case"
    folder.mkdir()
    request.addfinalizer(HELD_LOCKS.close)
    if case.setup is not None:
        case.setup(folder)
    if case.run_setup is not None:
        case.run_setup(folder, tiny_run)
    if case.chdir:
        monkeypatch.chdir(folder)
    argv = [arg.format(run=tiny_run, tmp=folder, model=tiny_bert_dir) for arg in case.argv]
    before = snapshot(tiny_run), snapshot(folder)
    capsys.readouterr()

    code = main(argv)

    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("xlgm: error: "), err
    assert "Traceback" not in err
    assert case.expect in lines[0], lines[0]
    assert (snapshot(tiny_run), snapshot(folder)) == before


def test_the_table_is_large_enough_and_its_ids_unique():
    ids = [(c.values[0] if hasattr(c, "values") else c).id for c in CASES]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)


def test_the_spec_of_the_spec_cases_is_valid(tmp_path, tiny_bert_dir):
    """Each spec case fails by its one change: the spec it changes parses."""
    from xlgm.study.spec import load_spec

    (tmp_path / "ok.yaml").write_text(SPEC.replace("MODEL", str(tiny_bert_dir)))
    spec = load_spec(tmp_path / "ok.yaml")
    assert spec.evaluation.max_examples == 8 and spec.seeds == (0,) and spec.target_languages == ("de",)


def test_no_verify_loads_flipped_weights_and_a_run_without_checksums_loads(tiny_run, tmp_path, capsys):
    """--no-verify skips the checksum; a run written before checksums (none in its index) loads unchecked."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    flipped_tensor_bytes(run)
    argv = ["evaluate", str(run), "--languages", "en", "--max-examples", "8", "--out", str(tmp_path / "e.json")]
    assert main(argv) == 2
    assert main([*argv, "--no-verify"]) == 0
    index = json.loads((run / "checkpoints.json").read_text())
    assert all(len(c["sha256"]["model.safetensors"]) == 64 for c in index["checkpoints"])
    for c in index["checkpoints"]:
        del c["sha256"]
    (run / "checkpoints.json").write_text(json.dumps(index))
    init = json.loads((run / "init.json").read_text())
    del init["sha256"]
    (run / "init.json").write_text(json.dumps(init))
    assert main(argv) == 0

"""Run ids and study ids are config hashes that published results and study folders are keyed by: a change to
how a config or a spec is built must leave them as they are. The ids below were computed before TrainConfig
resolved its `freeze` default itself (then `xlgm train` and the spec reader did)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xlgm.cli import build_parser, train_config
from xlgm.recipes.train import TrainConfig
from xlgm.study.spec import load_spec

STUDIES = Path(__file__).resolve().parents[2] / "src" / "xlgm" / "studies"

# spec file: (study id, number of runs, first run id, last run id)
SHIPPED = {
    "demo.yaml": ("a0f6ba585430", 4, "82e2d628dcd4", "74b9f95cbc53"),
    "predict-embedded.yaml": ("df9fd5c3633c", 2, "82e2d628dcd4", "a26317930958"),
    "xnli-e5-cpu.yaml": ("195232095f4f", 15, "c9143ebc3a97", "723d8dd03f7f"),
    "xnli-e5-design.yaml": ("eaf03bbaf466", 27, "75096f5d2bb4", "949a627e767b"),
    "xnli-mbert.yaml": ("175582b51da2", 18, "dececf4f53b7", "616e8229e4c4"),
    "pawsx-mbert.yaml": ("3d4a5cbc5673", 18, "3cf26b8e5af4", "37379419362d"),
    "xnli-mt5.yaml": ("77d71bfe28ba", 12, "d4e57332b803", "4124078d573f"),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_specs_keep_their_study_and_run_ids(name):
    study_id, runs, first, last = SHIPPED[name]
    spec = load_spec(STUDIES / name)
    run_ids = [c.run_id for c in spec.run_configs()]
    assert (spec.study_id, len(run_ids), run_ids[0], run_ids[-1]) == (study_id, runs, first, last)


@pytest.mark.parametrize(
    "argv, run_id, freeze",
    [
        ([], "ac9331e8cfbf", "word"),  # the embedded model: its word embeddings frozen
        (["--model", "bert-base-multilingual-cased", "--lr", "2e-5"], "57e82ba5f9c3", "none"),
        (["--objective", "sam", "--rho", "0.1"], "4e7880d76dde", "word"),
    ],
)
def test_xlgm_train_keeps_its_run_ids(argv, run_id, freeze):
    config = train_config(build_parser().parse_args(["train", *argv]))
    assert (config.run_id, config.freeze) == (run_id, freeze)


def test_train_config_means_what_xlgm_train_means():
    assert TrainConfig() == train_config(build_parser().parse_args(["train"]))
    assert TrainConfig().run_id == "ac9331e8cfbf"
    assert TrainConfig(model="bert-base-multilingual-cased").freeze == "none"
    assert TrainConfig(freeze="none").freeze == "none"  # a choice given is kept

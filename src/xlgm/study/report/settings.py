"""The report's settings section: settings.json of the analysis, or the same facts rebuilt from the spec, the
runs' recorded configs and the study database (data sizes, library versions, wall time, machines)."""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any

import pandas as pd

from xlgm.study.analyze import StudyData
from xlgm.study.machines import machine_counts
from xlgm.study.report.format import fmt
from xlgm.study.report.inputs import StudyRecords

REPORT_LIBRARIES = (
    "xlgm",
    "torch",
    "transformers",
    "accelerate",
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "matplotlib",
)


def _versions() -> dict[str, str]:
    out = {}
    for name in REPORT_LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _seconds_text(seconds: float) -> str:
    return f"{seconds:.1f} s ({seconds / 60:.1f} min)"


def settings_from_study(data: StudyData, records: StudyRecords) -> dict[str, Any]:
    """What settings.json holds, rebuilt from the spec, the runs' recorded configs and the study database."""
    spec = data.spec
    d = spec.measures.data
    configs = list(records.run_configs.values())
    train_rows = sorted({int(c["num_train"]) for c in configs if c.get("num_train") is not None})
    held_out = sorted({int(c["num_select"]) for c in configs if c.get("num_select") is not None})
    sizes: dict[str, Any] = {
        "train rows": ", ".join(map(str, train_rows)) or "unknown",
        "held-out rows (checkpoint selection)": ", ".join(map(str, held_out)) or "unknown",
        **{f"eval rows {lang} ({spec.evaluation.split})": n for lang, n in records.eval_rows.items()},
        "measure examples": f"{', '.join(map(str, spec.measures.sizes or [d.max_examples]))} ({d.language} {d.split})",
    }
    recorded: dict[str, set] = {}
    for config in configs:
        for name, version in (config.get("versions") or {}).items():
            recorded.setdefault(name, set()).add(str(version))
    versions = {f"{name} (training)": ", ".join(sorted(v)) for name, v in sorted(recorded.items())}
    versions.update({f"{name} (report)": v for name, v in _versions().items()})
    seconds = {kind: _seconds_text(s) for kind, s in sorted(records.seconds.items())}
    if records.seconds:
        seconds["total"] = _seconds_text(sum(records.seconds.values()))
    return {
        "spec": spec.to_yaml(),
        "measures": {
            spec.measures.label(item): dict(
                item.options_dict,
                seed=spec.measures.seed,
                params=spec.measures.params or "all",
                **({"rows": spec.measure_data(item).max_examples} if item.data is not None else {}),
            )
            for item in spec.measures.items
        },
        "data sizes": sizes,
        "library versions": versions,
        "wall time": seconds,
        "machines": machine_counts(data.machines),
    }


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        if not value:
            return [(prefix, "(none)")] if prefix else []
        out: list[tuple[str, str]] = []
        for key, item in value.items():
            out += _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(value, (list, tuple)):
        text = ", ".join(json.dumps(v, default=str) if isinstance(v, (dict, list, tuple)) else fmt(v) for v in value)
        return [(prefix, text or "(none)")]
    return [(prefix, fmt(value) if not isinstance(value, str) else value)]


def _spec_text(spec: Any) -> str:
    import yaml

    if isinstance(spec, str):
        return spec
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, default_flow_style=None)


def settings_sections(settings: dict[str, Any]) -> tuple[str | None, list[tuple[str, pd.DataFrame]]]:
    """(the spec as YAML text, [(section title, two-column table)]) of a settings dict."""
    spec = settings.get("spec")
    sections = []
    for key, value in settings.items():
        if key == "spec":
            continue
        items = _flatten(value) if isinstance(value, dict) else [(key, _flatten(value)[0][1])]
        sections.append((str(key).replace("_", " "), pd.DataFrame(items, columns=["setting", "value"])))
    return (None if spec is None else _spec_text(spec)), sections

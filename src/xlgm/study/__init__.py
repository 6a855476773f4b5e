"""Studies: a grid of fine-tuning runs from one YAML spec, evaluated, measured and analysed end to end.

spec.py     the YAML spec, validated into frozen dataclasses; grid expansion into TrainConfigs; the study id
db.py       the study's SQLite file (ResultsDB + study, study_runs, work), one-transaction unit commits, paths
            relative to the study folder
lock.py     one `study run` per folder at a time (flock on OUT/.lock)
runner.py   `xlgm study run`: train / evaluate / measure units, resumable, local or Ray executor
analyze.py  `xlgm study analyze`: correlations, granulated Kendall, CMI tables
report/     `xlgm study report`: self-contained HTML + markdown with figures
cli.py      the `study` subcommand (`add_study_parser`, `cmd_study`)
"""

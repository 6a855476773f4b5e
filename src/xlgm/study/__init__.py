"""Studies: a grid of fine-tuning runs from one YAML spec, evaluated, measured and analysed end to end.

spec.py     the YAML spec, validated into frozen dataclasses; grid expansion into TrainConfigs; the study id
db.py       the study's SQLite file (ResultsDB + study, study_runs, work), one-transaction unit commits, paths
            relative to the study folder
lock.py     one `study run` per folder at a time (flock on OUT/.lock)
folders.py  where a run lives in the study folder: OUT/runs/PREFIX-RUNID (or a bare RUNID in older studies)
runner.py   `xlgm study run`: the study loop (resumable)
units.py    unit ids and the plan: which units every run will have
repair.py   checks the files of finished units; moves unfinished or corrupt ones aside
executors.py  runs a grid point's units, locally or as Ray tasks
progress.py   the study's bar and its estimate of the time left
analyze.py  `xlgm study analyze`: correlations, granulated Kendall, CMI tables
report/     `xlgm study report`: self-contained HTML + markdown with figures
cli.py      the `study` subcommand (`add_study_arguments`, `cmd_study`)
"""

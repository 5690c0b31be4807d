"""What the operators' commands do, apart from parsing options: each module one job, async, testable.

`gridloop_cli.operate` turns these into commands; nothing here prints except through `output`.
"""

"""The training room: a run from start to finish.

`lifecycle` starts, resumes and records a run directory; `train` is the accelerate loop with its
hooks (`tracking`, `report`); `checkpoint`, `rundir`, `lock` and `runs` read and write run
directories; `warm_start` begins from another model's weights; `budget` checks the machine
before anything is allocated; `cpu_memory` tunes glibc. (Several processes are started by
the CLI: `seqmodel.cli.launch`.)
(Not `seqmodel/run/`: that name would shadow the `seqmodel.run()` function of the package.)
"""

"""`pc bench` / `make bench`: the benchmark suite, as a library.

Modules, each named for its concern: ``corpus`` (real texts nobody here wrote), ``workloads`` and
``needles`` (schemas and question sets), ``prompts`` (one prompt text every system sees),
``systems`` and ``llama_systems`` (the systems compared, one small adapter each), ``floor`` (the
physical floor), ``processes`` and ``child`` (whole-process runs with peak memory), ``runner``
(speed, alternating systems run by run), ``quality`` (cached answers against ``--no-cache``),
``perturb`` (the quality controls' rounded states),
``report`` and ``plots`` (markdown and PNG), ``suite`` (configuration and the whole run).

Nothing here prints: progress reaches the caller through a callback. Heavy imports (matplotlib,
``llama_cpp.Llama``) happen inside the functions that need them, so ``pc`` starts fast.
"""

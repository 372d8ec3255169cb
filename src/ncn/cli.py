"""`ncn <stage> ...`: the one command line that Snakemake calls and a person can call too.

Each stage lives in its own module exposing `main(argv: list[str]) -> int | None`, which
builds its own argparse parser (prog "ncn <stage>"). Modules are imported only when their
stage runs, so `ncn --help` stays fast and a broken optional stage cannot break the others.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from ncn.allocator import keep_freed_memory
from ncn.errors import NCNError

# stage -> (module, one-line help). Order is the order of the pipeline.
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("ncn.config", "validate a config file and print it resolved with defaults"),
    "data": ("ncn.data.cli", "fetch TinyStories, build the tokenizer, tokenize the splits"),
    "mlflow-init": ("ncn.tracking", "open the pipeline's MLflow run (and create the store) before the jobs"),
    "mlflow-serve": ("ncn.trackserver", "(started by mlflow-init --serve) run the jobs and their MLflow work in forks of one process"),
    "train": ("ncn.train", "train one (variant, size, seed) run; resumes from its checkpoint"),
    "evaluate": ("ncn.evaluate", "validation loss, perplexity and bits-per-byte of a run"),
    "export": ("ncn.hub", "write a run as a Hugging Face-style folder RUN/hf (safetensors, card)"),
    "generate": ("ncn.generate", "sample text from a run, streamed: --prompt, --temperature, --top-k, ..."),
    "analyze": ("ncn.analysis.cli", "brain scans, A/B statistics, claims, scaling, block skipping"),
    "paper": ("ncn.paper", "generate the numbers the LaTeX paper quotes"),
    "mlflow-end": ("ncn.tracking", "log the results to the pipeline's MLflow run and close it"),
    "mlflow-sync": ("ncn.tracking", "replay finished runs' files into the MLflow store"),
    "bench": ("ncn.bench", "speed benchmarks (tables, never test asserts)"),
}
# stages that only run models forward: their malloc keeps even the largest freed blocks (ncn.allocator)
INFERENCE_STAGES = ("evaluate", "generate", "analyze")


def stages_text() -> str:
    return "stages:\n" + "\n".join(f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items())


def _top_parser() -> argparse.ArgumentParser:
    epilog = stages_text() + "\n\nRun 'ncn <stage> --help' for a stage's options. The whole pipeline: 'snakemake --cores all'."
    p = argparse.ArgumentParser(
        prog="ncn",
        usage="ncn [-h] [--version] <stage> [options]",
        description="Neuromodulatory Control Networks (NCN) replication pipeline.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"ncn {__import__('ncn').__version__}")
    p.add_argument("stage", choices=list(COMMANDS), metavar="stage", help="one of the stages below")
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # a bare `ncn`: what can I run? (not argparse's "required: stage, args")
        print("usage: ncn <stage> [options]\n\n" + stages_text()
              + "\n\nRun 'ncn <stage> --help' for a stage's options, 'ncn --help' for more.", file=sys.stderr)
        return 2
    ns = _top_parser().parse_args(argv)
    if "NCN_MLFLOW_PIPELINE" in os.environ:  # a pipeline's job: run it in a fork of the pipeline's server if one answers
        from ncn.trackserver import delegate

        rc = delegate(ns.stage, ns.args)
        if rc is not None:
            return rc
    # before torch's import: its first large tensors come from the kept heap (ncn.allocator)
    keep_freed_memory(inference=ns.stage in INFERENCE_STAGES)
    module_name, _ = COMMANDS[ns.stage]
    module = importlib.import_module(module_name)
    entry = getattr(module, "main_" + ns.stage.replace("-", "_"), None) or module.main
    try:
        rc = entry(ns.args)
    except NCNError as e:
        print(f"ncn {ns.stage}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `ncn config ... | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"ncn {ns.stage}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def run() -> None:
    """The `ncn` console script: main(), then the exit handlers a normal exit runs (MLflow's run
    end, logging's flush, weakref finalizers), then os._exit. Skipped: the interpreter's teardown
    of every module and object, 1.5 s of CPU after a training job (3 s with MLflow) for nothing
    a finished job needs (`ncn bench startup`). An exception still exits the normal way, and so
    does a process under a profiler or tracer (cProfile, coverage, pdb)."""
    rc = main()
    if sys.getprofile() or sys.gettrace():  # cProfile, coverage, a debugger: their output is written at teardown
        sys.exit(rc)
    run_exit_handlers()
    os._exit(rc)


def run_exit_handlers() -> None:
    """What a normal exit runs before the interpreter's teardown: the exit handlers, then stdout and
    stderr flushed (`run`, and a job forked by ncn.trackserver before it reports its status)."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed stream (BrokenPipeError above)
            stream.flush()


if __name__ == "__main__":
    run()

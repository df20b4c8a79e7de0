"""``genbench``: the command line. Every command except ``perf`` and ``reproduce`` is a Hydra app over
``conf/``, so it takes overrides (``zoo=tiny model.width=32``), ``-m`` sweeps and ``hydra/launcher=...``.

    genbench run                        train (or reuse) the zoo, measure, evaluate, write + print leaderboard
    genbench train [-m] ...             train the zoo (or, with zoo=none and -m, one model per sweep job)
    genbench measure ...                compute missing measures on the stored zoo
    genbench evaluate ...               compute statistics and write leaderboard/ tables, figures and page (the
                                        statistics and figures of unchanged measures come from their caches)
    genbench leaderboard ...            print a leaderboard table from leaderboard/
    genbench measures ...               list every registered measure
    genbench collect collect.sources=[DIR/*]   merge per-job stores (cluster sweeps) into store.root
    genbench migrate store.root=DIR     upgrade a store written by an older genbench in place
    genbench export [export.path=ZOO.tar]       write store.root as one verified archive (docs/archives.md)
    genbench import PATH_OR_URL [collect.on_conflict=...]   verify an archive, then merge it into store.root
    genbench reproduce pnas|prl|nmi|mlst [--out DIR] [--full|--quick] [key=value ...]
    genbench perf [--json PATH] [--md PATH] [--quick] [--device cuda] [--standard STORE LEADERBOARD]
    genbench perf --gpu-check [--device cuda] [--out DIR]    the GPU against the CPU (benchmark.perf.gpu)

A mistake in the input (a hyperparameter, a name, a file) or of the environment (a read-only or full disk,
a folder without permission) is one line on stderr and exit status 2; ``--debug`` (or HYDRA_FULL_ERROR=1)
shows the traceback. Ctrl-C stops with status 130; what finished is stored and the same command resumes.
The config's paths (store.root, leaderboard.dir, dataset.root, measures.plugins, collect.sources, and
--config-path/--config-dir) are relative to the folder genbench is started in. ``measures`` and ``leaderboard``
write nothing and ``evaluate`` only the leaderboard (no Hydra run dir), so they work on a read-only store and the
first two in a read-only folder. A terminal whose locale cannot show
genbench's symbols (LC_ALL=C) gets an ASCII spelling of them (tau, Psi, <=, ->).
"""
from __future__ import annotations

import argparse
import codecs
import contextlib
import errno
import logging
import os
import sqlite3
import sys
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from benchmark.plan import Plan

log = logging.getLogger("genbench")

USAGE_ERROR, INTERRUPTED = 2, 130


def _train(plan: Plan) -> None:
    from benchmark import pipeline
    pipeline.train(plan)
    _where(plan)


def _measure(plan: Plan) -> None:
    from benchmark import pipeline
    pipeline.measure(plan)
    _where(plan)


def _evaluate(plan: Plan) -> None:
    from benchmark import pipeline
    pipeline.evaluate(plan)
    _where(plan)


def _run(plan: Plan) -> None:
    from benchmark import pipeline
    print(pipeline.run(plan))
    _where(plan)


def _leaderboard(plan: Plan) -> None:
    from benchmark import pipeline
    from benchmark.report import layout
    print(pipeline.leaderboard(plan))
    index = layout.index(plan.board.folder)
    if index.exists():
        print(f"Tables, per-axis breakdown and plots: {index}")


def _measures(plan: Plan) -> None:
    from benchmark import pipeline
    print(pipeline.describe_measures(plan))


def _collect(plan: Plan) -> None:
    from benchmark import pipeline
    pipeline.collect(plan)
    _where(plan)


def _migrate(plan: Plan) -> None:
    from benchmark import pipeline
    pipeline.upgrade(plan)


def _export(plan: Plan) -> None:
    from benchmark import pipeline
    pipeline.export(plan)


def _import(rest: list[str]) -> None:
    """``genbench import PATH_OR_URL [overrides]``: the one argument that is not an override is the archive (a
    path, relative to the current folder, or a URL); the rest go to Hydra as for every other command."""
    from benchmark.errors import UserError
    given, after_flag = [], False
    for i, arg in enumerate(rest):
        if not after_flag and not arg.startswith("-") and "=" not in arg.split("://")[0].split("/")[0]:
            given.append(i)
        after_flag = arg in _CONFIG_DIRS  # its folder is the next argument
    if len(given) != 1:
        raise UserError(f"give one archive to import (a path or a URL), not {len(given)}: genbench import "
                        f"PATH_OR_URL [store.root=DIR] [collect.on_conflict=fail|keep|replace]")
    source = rest[given[0]]
    if "://" not in source:
        source = str(Path(source).expanduser().absolute())
    overrides = rest[:given[0]] + rest[given[0] + 1:]

    def task(plan: Plan) -> None:
        from benchmark import pipeline
        pipeline.import_archive(plan, source)
        _where(plan)

    _hydra("import", overrides, task)


def _check_zoo(plan: Plan, overrides: list[str]) -> None:
    """The zoo's models are valid (each task's, for a suite), and no override sets a hyperparameter that a zoo axis
    would replace. Before torch is imported, so that a mistake is answered at once."""
    from benchmark.errors import HParamsError
    from benchmark.zoo.grid import base_hparams, shadowed
    for task in plan.tasks:
        base_hparams(task.config)
        complaint = shadowed(task.config, overrides)
        if complaint:
            raise HParamsError(complaint)
    plan.models  # noqa: B018  (expanded and validated once; the stages reuse them)


def _where(plan: Plan) -> None:
    from benchmark import pipeline
    for line in pipeline.outputs(plan):
        log.info(line)


TASKS: dict[str, Callable[["Plan"], None]] = {
    "run": _run, "train": _train, "measure": _measure, "evaluate": _evaluate, "leaderboard": _leaderboard,
    "measures": _measures, "collect": _collect, "migrate": _migrate, "export": _export}
OTHER = ("import", "reproduce", "perf")
ZOO_COMMANDS = ("run", "train", "measure", "evaluate")  # the commands that expand the zoo
# the commands that write nothing under store.root (measures and leaderboard write nothing at all; evaluate writes
# only leaderboard.dir): Hydra keeps no run dir, .hydra/ or log file for them there, so they work on a read-only
# store and from a read-only folder
READ_ONLY = ("measures", "leaderboard", "evaluate")
# export only reads the store, and import must leave store.root as it was when an archive is refused: neither keeps a
# Hydra run dir under store.root
NO_RUN_DIR = (*READ_ONLY, "export", "import")
_NO_RUN_DIR = ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=genbench_console"]
_CONFIG_DIRS = ("--config-path", "-cp", "--config-dir", "-cd")


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a mistake as the one-line ``UserError`` (exit 2), without the usage block."""

    def error(self, message: str):
        from benchmark.errors import UserError
        raise UserError(f"{message} (see genbench {self.prog.split()[-1]} --help)")


def _reproduce(argv: list[str]) -> None:
    from benchmark import reproduce
    from benchmark.report import layout
    parser = _OneLineParser(prog="genbench reproduce", description="Rerun a paper's central experiment.")
    parser.add_argument("paper", choices=list(reproduce.PAPERS),
                        help="; ".join(f"{k}: {v}" for k, v in reproduce.PAPERS.items()))
    parser.add_argument("--out", type=Path, default=None, help="default: leaderboard/reproductions/<paper>")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="the authors' protocol (no time budget)")
    mode.add_argument("--quick", action="store_true", help="a one-minute version, for tests")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="protocol keys of conf/reproduce/<paper>.yaml")
    args = parser.parse_intermixed_args(argv)
    out = args.out or layout.reproduction(args.paper)
    profile = "full" if args.full else "quick" if args.quick else "default"
    table = reproduce.run(args.paper, out, profile, args.overrides)
    print(table.to_string(index=False))
    print(f"\nwrote {out}")


def _config_dirs(rest: list[str]) -> list[str]:
    """``rest`` with each ``--config-path``/``--config-dir`` folder checked and made absolute (relative to the
    current folder, like every path of genbench: Hydra would take a relative --config-path relative to genbench's
    own code)."""
    from benchmark.errors import UserError
    out, args = [], iter(rest)
    for arg in args:
        flag, eq, value = arg.partition("=")
        if flag not in _CONFIG_DIRS:
            out.append(arg)
            continue
        value = value if eq else next(args, None)
        if not value:
            raise UserError(f"{flag} needs a folder of configs")
        path = Path(value).expanduser().absolute()
        if not path.exists():
            raise UserError(f"{flag} {value}: no such folder {path}")
        if not path.is_dir():
            raise UserError(f"{flag} {value}: {path} is a file, not a folder of configs (give the folder that "
                            f"holds it)")
        out += [flag, str(path)]
    return out


def _hydra(command: str, rest: list[str], task: Callable[["Plan"], None] | None = None) -> None:
    import hydra

    from benchmark import config
    from benchmark.plan import make_plan
    task, main_pid, cwd = task or TASKS[command], os.getpid(), os.getcwd()
    rest = _config_dirs(rest)
    if command in NO_RUN_DIR:  # among the user's overrides (argparse wants them together), before them: theirs win
        first = next((i for i, a in enumerate(rest) if "=" in a and not a.startswith("-")), 0)
        own_logging = any(a.lstrip("+~").startswith(("hydra/job_logging", "hydra.job_logging")) for a in rest)
        ours = [o for o in _NO_RUN_DIR if not (own_logging and "job_logging" in o)]
        rest = [*rest[:first], *ours, *rest[first:]]

    def app(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        if os.getpid() != main_pid:  # a job of Hydra's joblib/submitit launcher: end with the process that started it
            from benchmark.runtime import bind_to_parent
            bind_to_parent()
        logging.getLogger("genbench").setLevel(logging.INFO)
        config.absolute_paths(cfg, cwd)  # once, before anything (a plugin's os.chdir) can move a relative path
        try:
            plan = make_plan(cfg)  # the config read once: below here, every stage sees typed values
            if command in ZOO_COMMANDS:
                _check_zoo(plan, list(HydraConfig.get().overrides.task))
            if command in ("run", "measure") and cfg.run.get("isolate", True):
                from benchmark.processes import start_forkserver
                start_forkserver()  # a valid config: the measure workers' server imports torch while this one does
            task(plan)
        except Exception as err:
            if isinstance(err, OSError) and err.errno in _DISK and not err.filename:  # a write() names no file
                err.add_note(f"it writes under store.root={cfg.store.root} and leaderboard.dir={cfg.leaderboard.dir}")
            elif isinstance(err, sqlite3.OperationalError) and _environment_line(err):  # sqlite names no file
                err.add_note(f"store.root={cfg.store.root}")
            hc = HydraConfig.get()
            if hc.mode == RunMode.MULTIRUN:  # say which sweep job it was
                err.add_note(f"in the sweep job with {' '.join(hc.overrides.task)}")
            raise

    app.__name__ = f"genbench_{command}"
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; main() decides what the user sees
    sys.argv = [f"genbench-{command}", *rest]
    try:
        with _without_hydra_job_banner():
            hydra.main(config_path=str(config.conf_dir()), config_name="config", version_base="1.3")(app)()
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


@contextlib.contextmanager
def _without_hydra_job_banner():
    """Hydra writes "Error executing job with overrides: [...]" to stderr before re-raising a job's error;
    the error itself is what :func:`main` reports (naming the sweep job), so that line is dropped."""
    real = sys.stderr

    class Filtered:
        def write(self, text: str) -> int:
            return len(text) if text.startswith("Error executing job with overrides:") else real.write(text)

        def __getattr__(self, name):
            return getattr(real, name)

    sys.stderr = Filtered()
    try:
        yield
    finally:
        sys.stderr = real


_ASCII = {"–": "-", "—": "--", "−": "-", "‐": "-", "≤": "<=", "≥": ">=", "≠": "!=", "≈": "~", "±": "+/-",
          "×": "x", "·": "*", "÷": "/", "²": "^2", "³": "^3", "√": "sqrt", "∞": "inf", "→": "->", "←": "<-",
          "⇒": "=>", "…": "...", "‖": "||", "Σ": "Sum", "∑": "Sum", "∈": " in ", "‘": "'", "’": "'", "“": '"',
          "”": '"', "•": "*", "°": " deg", "µ": "mu"}
_ERRORS = "genbench-ascii"


def _to_ascii(err: UnicodeError) -> tuple[str, int]:
    """The error handler of a console that cannot encode genbench's symbols: an ASCII spelling of each (τ → tau,
    Ψ → Psi, ≤ → <=, – → -), a letter without its accent, else ``?``."""
    if not isinstance(err, UnicodeEncodeError):
        raise err
    out = []
    for char in err.object[err.start:err.end]:
        name = unicodedata.name(char, "")
        if char in _ASCII:
            out.append(_ASCII[char])
        elif name.startswith("GREEK ") and " LETTER " in name:  # GREEK CAPITAL LETTER PSI -> Psi
            letter = name.split(" LETTER ")[1].split(" WITH ")[0].removeprefix("FINAL ").lower()
            out.append(letter.capitalize() if "CAPITAL" in name else letter)
        else:
            out.append(unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode() or "?")
    return "".join(out), err.end


def _ascii_console() -> None:
    """If stdout or stderr cannot encode the symbols genbench prints (an ASCII locale such as LC_ALL=C without
    PYTHONUTF8), write them in ASCII instead of failing with UnicodeEncodeError; worker processes inherit
    PYTHONIOENCODING with Python's escapes."""
    probe = "".join(_ASCII) + "τΨ"
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None)
        if not encoding or not hasattr(stream, "reconfigure"):
            continue
        try:
            probe.encode(encoding)
        except UnicodeEncodeError:
            try:
                codecs.lookup_error(_ERRORS)
            except LookupError:
                codecs.register_error(_ERRORS, _to_ascii)
            stream.reconfigure(errors=_ERRORS)
            os.environ.setdefault("PYTHONIOENCODING", f"{encoding}:backslashreplace")
        except LookupError:
            continue


_DISK = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
         errno.EPERM: "operation not permitted", errno.ENOSPC: "no space left on the device",
         errno.EDQUOT: "the disk quota is exceeded", errno.ENOTDIR: "a part of the path is a file, not a folder"}
_SQLITE = {"unable to open database file": "the store's database cannot be opened",
           "attempt to write a readonly database": "the store's database is read-only",
           "database or disk is full": "the disk of the store is full"}
_FULL = "free some space (or raise the quota) and rerun the same command: what finished is stored"
_MOVE = ("run genbench in a folder it can write, or point store.root and leaderboard.dir at one "
         "(store.root=DIR leaderboard.dir=DIR; Hydra's run dir is under store.root)")


def _environment_line(err: BaseException) -> str | None:
    """One line for a failure of the disk or its permissions (the error or its explicit cause), or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _DISK:
            path = os.path.abspath(err.filename) if isinstance(err.filename, str) else err.filename
            if err.errno == errno.ENOTDIR:
                return (f"cannot make the folder {path}: {_DISK[err.errno]}; point store.root and leaderboard.dir "
                        f"at folders")
            full = err.errno in (errno.ENOSPC, errno.EDQUOT)
            what = f"cannot write {path}" if path else "a write failed"
            return f"{what}: {_DISK[err.errno]}; {_FULL if full else _MOVE}"
        if isinstance(err, sqlite3.OperationalError):
            for text, what in _SQLITE.items():
                if text in str(err):
                    full = "full" in text
                    return f"{what} ({err}); {_FULL if full else 'store.root must be a folder genbench can write'}"
        err = err.__cause__
    return None


def _yaml_line(err: BaseException) -> str | None:
    """Invalid YAML in a config file: the file, the line and the problem."""
    import yaml
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, yaml.MarkedYAMLError):
            mark, start = err.problem_mark or err.context_mark, err.context_mark
            where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "a config file"
            problem = err.problem or err.context or type(err).__name__
            if err.context and start is not None and start is not mark:
                problem += f" ({err.context} from line {start.line + 1})"
            return f"invalid YAML in {where}: {problem}"
        if isinstance(err, yaml.YAMLError):
            return f"invalid YAML in a config file: {err}"
        err = err.__cause__
    return None


_MEASURE_ERRORS = (("measures.context", "MissingInputError"), ("measures.plugins", "PluginError"),
                   ("measures.registry", "DuplicateMeasureError"), ("measures.registry", "UnknownMeasureError"))


def user_message(err: BaseException) -> str | None:
    """The one line to show for a mistake in the input, or None for a bug (which keeps its traceback)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from benchmark.errors import UserError
    # the measures' errors, from their modules if they were imported (a config error never imports torch for this)
    measure_errors = tuple(getattr(sys.modules[module], name) for module, name in _MEASURE_ERRORS
                           if module in sys.modules and hasattr(sys.modules[module], name))
    if isinstance(err, (UserError, *measure_errors)):
        text = str(err)
    elif isinstance(err, HydraException):
        text = str(err).split("Config search path:")[0]  # the search path is noise to a user who mistyped
        cause = err.__cause__
        if isinstance(cause, OmegaConfBaseException):
            text += ": " + _omegaconf_line(cause)
    elif isinstance(err, OmegaConfBaseException):
        text = _omegaconf_line(err)
    elif line := _yaml_line(err) or _environment_line(err):
        text = line
    else:
        return None
    text = "; ".join([text, *getattr(err, "__notes__", [])])
    return " ".join(text.split())


def _omegaconf_line(err: BaseException) -> str:
    """OmegaConf's message without its ``full_key: / object_type=`` block, plus the key it is about."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    key = getattr(err, "full_key", None)
    return f"{first} (key {key})" if key and str(key) not in first else first


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("HYDRA_FULL_ERROR") == "1"
    argv = [a for a in argv if a != "--debug"]
    command, rest = (argv[0], argv[1:]) if argv else ("--help", [])
    _ascii_console()
    try:
        if command in ("-h", "--help"):
            print(__doc__)
        elif command == "perf":
            from benchmark.perf import main as perf_main
            perf_main(rest)  # its report dict is for Python callers: the console script must exit 0
        elif command == "reproduce":
            _reproduce(rest)
        elif command == "import":
            _import(rest)
        elif command in TASKS:
            _hydra(command, rest)
        else:
            print(f"genbench: unknown command {command!r}; valid: {', '.join([*TASKS, *OTHER])}", file=sys.stderr)
            sys.exit(USAGE_ERROR)
    except BrokenPipeError:  # `genbench ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"genbench {command}: interrupted; what finished is stored, and the same command resumes",
              file=sys.stderr)
        sys.exit(INTERRUPTED)
    except Exception as err:
        message = user_message(err)
        if message is None or debug:
            raise
        print(f"genbench {command}: {message}", file=sys.stderr)
        sys.exit(USAGE_ERROR)


if __name__ == "__main__":
    main()

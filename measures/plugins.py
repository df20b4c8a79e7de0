"""User measures: a Python file, or an installed package exposing the entry-point group ``genbench.measures``.

A plugin file simply uses the ``@measure`` decorator at import time::

    # my_measure.py
    from measures import Context, measure

    @measure("my_norm", needs=("model",), sign=1, family="plugin", reference="me, 2026")
    def my_norm(ctx: Context) -> float:
        '''Sum of squared weights.'''
        return sum(float((w ** 2).sum()) for w in ctx.weights)
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import sys
import traceback
from pathlib import Path

ENTRY_POINT_GROUP = "genbench.measures"
_LOADED: set[str] = set()


class PluginError(ImportError):
    """A plugin could not be loaded; the message names the file and line."""


def load_file(path: str | Path) -> None:
    """Import a measure file once (registering its measures). Errors name the file and the line."""
    path = Path(path).expanduser().resolve()
    if str(path) in _LOADED:
        return
    if not path.is_file():
        raise PluginError(f"measure plugin file not found: {path}")
    name = "genbench_plugin_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        del sys.modules[name]
        raise PluginError(f"syntax error in measure plugin {err.filename}, line {err.lineno}: {err.msg}") from err
    except SystemExit as err:  # a script's `sys.exit(main())`: a plugin only defines measures
        del sys.modules[name]
        raise PluginError(f"measure plugin {path}{_where(err, path)} exited while being imported "
                          f"(sys.exit({err.code!r})); a plugin file must only define measures (guard a script's "
                          f"entry with `if __name__ == \"__main__\":`)") from None
    except Exception as err:
        del sys.modules[name]
        raise PluginError(f"measure plugin {path}{_where(err, path)} failed to load: {type(err).__name__}: "
                          f"{err}") from err
    _LOADED.add(str(path))


def _where(err: BaseException, path: Path) -> str:
    """", line N": the last line of the plugin file ``path`` in the error's traceback, or "" if none."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).resolve() == path]
    return f", line {frames[-1].lineno}" if frames else ""


def load_entry_points() -> list[str]:
    """Import every module registered under the ``genbench.measures`` entry-point group."""
    loaded = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.value in _LOADED:
            continue
        try:
            ep.load()
        except (Exception, SystemExit) as err:
            raise PluginError(f"measure entry point {ep.name} = {ep.value} failed to load: "
                              f"{type(err).__name__}: {err}") from err
        _LOADED.add(ep.value)
        loaded.append(ep.value)
    return loaded


def load_all(files: list[str | Path] = ()) -> None:
    load_entry_points()
    for f in files:
        load_file(f)

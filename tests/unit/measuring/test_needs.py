"""A measure sees only the inputs it declares in ``needs``: reading any other, directly or through an intermediate
that rests on it (whoever computed that first), is an ``UndeclaredInputError`` naming the measure, what it used and
the declaration it lacks; the benchmark records it as that measure's failure, in this process and in the isolated
workers alike, and the other measures go on."""
from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

import measures
from benchmark.measuring import isolation
from benchmark.measuring.jobs import compute
from measures import Context, Registry, measure
from measures.context import UndeclaredInputError

PLUGIN = textwrap.dedent('''
    from measures import measure

    @measure("needs.history_undeclared", family="plugin", reference="a test")
    def history_undeclared(ctx):
        """The number of history rows, without declaring the history.
        Must fail."""
        return float(len(ctx.history))

    @measure("needs.history_declared", needs=("history",), family="plugin", reference="a test")
    def history_declared(ctx):
        """The number of history rows.
        Declared, so it works."""
        return float(len(ctx.history))
''')


def _context() -> Context:
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.randn(20, 4, generator=g), torch.randint(0, 3, (20,), generator=g)
    return Context(net, init_model=net, train=(x, y), test=(x, y), hparams={"optimizer.lr": 0.1},
                   history=[{"step": 1, "train_loss": 1.0}, {"step": 2, "train_loss": 0.5}], replicates=[net])


def _registry() -> Registry:
    """Measures that each read one input, under a declaration without it, and one that declares it."""
    reg = Registry()

    def add(name, needs, fn, **kw):
        fn.__doc__ = f"{name}.\n\nA test measure."
        measure(name, needs=needs, family="plugin", reference="a test", registry=reg, **kw)(fn)
    add("uses_history", ("model",), lambda ctx: float(len(ctx.history)))
    add("declares_history", ("history",), lambda ctx: float(len(ctx.history)))
    add("uses_hparams", ("model",), lambda ctx: float(ctx.hp("optimizer.lr")))
    add("uses_init", ("model",), lambda ctx: float(ctx.init_weights[0].sum()))
    add("uses_test", ("model", "train_data"), lambda ctx: float(ctx.y_test.sum()))
    add("uses_replicates", ("model",), lambda ctx: float(len(ctx.replicate_params)))
    add("uses_model", ("train_data",), lambda ctx: float(ctx.num_params))
    add("margins_declared", ("model", "train_data"), lambda ctx: float(ctx.margins.sum()))
    add("margins_undeclared", ("model",), lambda ctx: float(ctx.margins.sum()))
    add("shared_declared", ("model", "hparams"), lambda ctx: ctx.shared(_lr_times_params))
    add("shared_undeclared", ("model",), lambda ctx: ctx.shared(_lr_times_params))
    return reg


def _lr_times_params(ctx: Context) -> float:
    """A shared intermediate that reads the hyperparameters."""
    return float(ctx.hp("optimizer.lr")) * ctx.num_params


@pytest.mark.parametrize("name, used, need", [
    ("uses_history", "ctx.history", "history"),
    ("uses_hparams", "ctx.hp('optimizer.lr')", "hparams"),
    ("uses_init", "ctx.init_weights, which rests on the initial model,", "init_model"),
    ("uses_test", "ctx.y_test", "test_data"),
    ("uses_replicates", "ctx.replicate_params", "replicates"),
    ("uses_model", "ctx.num_params, which rests on the model,", "model"),
    ("margins_undeclared", "ctx.margins, which rests on the training data,", "train_data"),
])
def test_an_undeclared_input_is_an_error_naming_the_measure_the_use_and_the_declaration(name, used, need):
    with pytest.raises(UndeclaredInputError) as err:
        _registry().get(name)(_context())
    assert str(err.value) == f"measure {name!r} uses {used} but does not declare needs=(..., {need!r})"


def test_a_declared_input_works_and_the_context_outside_a_measure_is_open():
    reg, ctx = _registry(), _context()
    assert reg.get("declares_history")(ctx).value == 2.0
    assert len(ctx.history) == 2 and ctx.hp("optimizer.lr") == 0.1  # a notebook reads what it likes


def test_an_intermediate_computed_for_one_measure_does_not_leak_its_inputs_to_another():
    """``ctx.margins`` and a ``ctx.shared`` value, computed for a measure that declares what they rest on, stay
    closed to a measure that does not, even though they are cached."""
    reg, ctx = _registry(), _context()
    assert reg.get("margins_declared")(ctx).value == pytest.approx(float(ctx.margins.sum()))
    with pytest.raises(UndeclaredInputError) as err:
        reg.get("margins_undeclared")(ctx)
    assert str(err.value) == ("measure 'margins_undeclared' uses ctx.margins, which rests on the training data, but "
                              "does not declare needs=(..., 'train_data')")
    assert reg.get("shared_declared")(ctx).value == pytest.approx(0.1 * ctx.num_params)
    with pytest.raises(UndeclaredInputError, match="'shared_undeclared' uses ctx.shared\\(_lr_times_params\\), "
                                                   "which rests on the hyperparameters"):
        reg.get("shared_undeclared")(ctx)


def test_the_benchmark_records_an_undeclared_input_as_the_measures_failure():
    reg, ctx = _registry(), _context()
    value, status, error, _, _ = compute(reg.get("uses_history"), ctx, ctx, None)
    assert (value, status) == (None, "failed")
    assert error == ("UndeclaredInputError: measure 'uses_history' uses ctx.history but does not declare "
                     "needs=(..., 'history')")
    assert compute(reg.get("declares_history"), ctx, ctx, None)[:3] == (2.0, "ok", None)


def _plugin_items(common, items):
    """In a worker: each plugin measure of ``items`` computed on the small Context, as (name, status, error)."""
    ctx = _context()
    for name in items:
        _, status, error, _, _ = compute(measures.REGISTRY.get(name), ctx, ctx, None)
        yield name, status, error


@pytest.mark.parametrize("isolate", [True, False])
def test_in_the_isolated_workers_too(tmp_path, isolate):
    path = tmp_path / "needs_plugin.py"
    path.write_text(PLUGIN)
    names = ("needs.history_undeclared", "needs.history_declared")
    iso = isolation.Isolation(measure_of=lambda item: item, failed=lambda item, why: (item, "crashed", why))
    try:
        with isolation.Pool(1, (measures.plugins.load_all, ([str(path)],)), isolate) as pool:
            out = list(pool.run([isolation.Task(_plugin_items, None, names)], iso))
    finally:
        for name in names:
            if name in measures.REGISTRY:
                measures.REGISTRY.remove(name)
        measures.plugins._LOADED.discard(str(path.resolve()))
    assert out == [("needs.history_undeclared", "failed", "UndeclaredInputError: measure 'needs.history_undeclared' "
                    "uses ctx.history but does not declare needs=(..., 'history')"),
                   ("needs.history_declared", "ok", None)]


def test_a_stored_model_is_loaded_with_the_inputs_its_measures_declare_and_gives_the_same_values(trained_tiny,
                                                                                                 tmp_path):
    from benchmark.measuring.context import Trained
    from benchmark.runtime import RunOptions
    from benchmark.store import Store
    store = Store(tmp_path / "store", readonly=True)
    model_id = sorted(store.model_ids())[0]
    full = Trained.from_store(store, model_id, RunOptions())
    lean = Trained.from_store(store, model_id, RunOptions(), needs={"model", "train_data"})
    assert full.init is not None and full.history and lean.init is None and lean.history is None
    for name in ("params", "log_prod_of_fro", "margin_dist.median"):  # each reads the model and data only
        m = measures.REGISTRY.get(name)
        assert set(m.needs) <= {"model", "train_data"}
        assert compute(m, lean.context(), lean.context(), None)[:2] == compute(m, full.context(), full.context(),
                                                                               None)[:2]
    needs_init = measures.REGISTRY.get("dist_init_fro")
    assert compute(needs_init, lean.context(), lean.context(), None)[1:3] == (
        "failed", "MissingInputError: this measure needs the initial weights (init_model=...), which the Context "
                  "was not given")

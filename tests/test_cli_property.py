"""Property: whatever numbers and names a user types, the CLI answers with exit code 0 or with one
``error:`` line, never a traceback.

Each drawn invocation starts from valid settings (registered names, numbers in range) and, in most
examples, replaces one of them with a wild value (junk text with rich markup brackets, negative,
huge, NaN or fractional numbers, other registered names), so both the work behind valid inputs
and every refusal are reached. The commands stay cheap: a tiny digits checkpoint, batteries on at
most four images, ``Trainer.fit`` stubbed where the models are drawn (a separate test trains
resnet-mini for real on drawn settings), and ``run_study`` stubbed: every input of ``run`` is
checked before the study starts.
"""

import string
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import robustlab
import robustlab.train
from robustlab.cli import app
from robustlab.data import DATASETS
from robustlab.defenses.downsampling import METHODS, SHARED_JITTER_METHODS, method_options
from robustlab.evaluate import BATTERIES
from robustlab.models import MODELS
from robustlab.train import OBJECTIVES, OPTIMIZERS, SCHEDULES, TrainResult

runner = CliRunner()
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

JUNK = st.text(alphabet=string.ascii_letters + string.digits + "-_:/.+[] ", max_size=12)
INTS = st.one_of(st.integers(-3, 40).map(str), st.integers(10**3, 10**7).map(str), JUNK)
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(str),
                   st.floats(-1, 3).map(lambda v: f"{v:.3g}"), JUNK)
EPS = st.one_of(FLOATS, st.builds(lambda a, b: f"{a}/{b}", st.integers(-8, 300), st.integers(-2, 300)),
                st.sampled_from(["8/255", "0.1", "8", "255", "1/0", "/", "nan", "inf", "-0.1"]))
GOOD_EPS = st.sampled_from(["0", "0.05", "8/255", "0.3", "1"])
SMALL = st.one_of(st.integers(-3, 3).map(str), JUNK)  # counts that multiply the work (repeats, draws)


def names(known, *extra):
    return st.one_of(st.sampled_from([*known, *extra]), JUNK)


@st.composite
def invocation(draw, valid, wild):
    """Valid settings, with at most one (drawn) replaced by a wild value."""
    values = {key: draw(strategy) for key, strategy in valid.items()}
    field = draw(st.sampled_from([None, *wild]))
    if field is not None:
        values[field] = draw(wild[field])
    return values


def options(values):
    """``{"batch_size": "4"}`` -> ``["--batch-size", "4"]``; ``None`` values are left out."""
    return [a for k, v in values.items() if v is not None for a in ("--" + k.replace("_", "-"), v)]


def answered(r) -> None:
    """Exit code 0, or one ``error:`` line as the last thing printed; never a traceback."""
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    if r.exit_code != 0:
        lines = [line for line in r.output.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], r.output


@SETTINGS
@given(invocation(
    valid={"n": st.integers(1, 60).map(str), "batch_size": st.integers(8, 600).map(str), "eps": GOOD_EPS,
           "norm": st.sampled_from(["linf", "l2"]), "seed": st.integers(0, 5).map(str),
           "dataset": st.just("digits"), "device": st.just("cpu")},
    wild={"n": INTS, "batch_size": INTS, "eps": EPS, "norm": names(["l1", "L2", "inf"]), "seed": INTS,
          "dataset": names(DATASETS.names()), "device": names(["auto", "cuda", "cuda:7", "mps", "cpu:0", "gpu"])},
))
def test_evaluate_answers_every_number_and_name(digits_checkpoint, values):
    with tempfile.TemporaryDirectory() as tmp:
        answered(runner.invoke(app, ["evaluate", str(digits_checkpoint), "--battery", "none",
                                     *options(values), "--ledger", str(Path(tmp) / "ledger.sqlite")]))


@settings(SETTINGS, max_examples=12)
@given(invocation(
    valid={"battery": st.sampled_from([*BATTERIES.names(), "none"]), "n": st.integers(1, 4).map(str),
           "repeats": st.sampled_from(["1", "2"]), "ensemble": st.sampled_from(["1", "2"]),
           "bpda": st.sampled_from([None, "identity", "smooth"]), "eps": GOOD_EPS,
           "norm": st.sampled_from(["linf", "l2"])},
    wild={"battery": names(["Quick", " standard ", "autoattack", "none "]), "repeats": SMALL, "ensemble": SMALL,
          "bpda": names(["BPDA", "none"]), "eps": EPS},
))
def test_evaluate_answers_every_battery(digits_checkpoint, values):
    with tempfile.TemporaryDirectory() as tmp:
        answered(runner.invoke(app, ["evaluate", str(digits_checkpoint), *options(values), "--device", "cpu",
                                     "--ledger", str(Path(tmp) / "ledger.sqlite")]))


@pytest.fixture()
def no_fit(monkeypatch):
    """Trainer.fit returns at once: the drawn models and datasets are checked and built, not trained."""

    def fit(self, train, val=None, *, resume=False):
        return TrainResult(self.model, [], None)

    monkeypatch.setattr(robustlab.train.Trainer, "fit", fit)


MODEL_NAMES = [*MODELS.names(), "torchvision:resnet18", "timm:resnet10t"]


@settings(SETTINGS, max_examples=25)
@given(invocation(
    valid={"dataset": st.sampled_from(["digits", "synthetic"]), "model": st.sampled_from(MODEL_NAMES),
           "objective": st.sampled_from(OBJECTIVES.names()), "optimizer": st.sampled_from(OPTIMIZERS.names()),
           "schedule": st.sampled_from(["onecycle", "cosine", "cyclic", "constant"]),
           "batch_size": st.integers(1, 256).map(str), "limit": st.integers(1, 3000).map(str),
           "val_size": st.sampled_from(["0", "0.1", "50"]), "lr": st.sampled_from(["0.1", "0.01"])},
    wild={"dataset": names(DATASETS.names()), "model": names(MODEL_NAMES, "torchvision:nope", "timm:", "timm:x"),
          "objective": names(["PGD-AT", "trades"]), "optimizer": names(["adam", "SGD"]),
          "schedule": names(["multistep", "step"]), "batch_size": INTS, "limit": INTS, "val_size": FLOATS,
          "lr": FLOATS, "warmup_epochs": FLOATS, "label_smoothing": FLOATS, "ema": FLOATS, "grad_clip": FLOATS,
          "milestones": st.one_of(st.sampled_from(["1", "1,2", "x", ",", "1,,2", "-1"]), JUNK),
          "seed": INTS},
))
def test_train_answers_every_number_and_name(no_fit, values):
    with tempfile.TemporaryDirectory() as tmp:
        answered(runner.invoke(app, ["train", *options(values), "--epochs", "1", "--device", "cpu",
                                     "--out", str(Path(tmp) / "run")]))


@settings(SETTINGS, max_examples=5)
@given(invocation(
    valid={"objective": st.sampled_from(OBJECTIVES.names()), "schedule": st.sampled_from(SCHEDULES.names()),
           "batch_size": st.integers(1, 80).map(str), "limit": st.integers(1, 48).map(str),
           "val_size": st.sampled_from(["0", "0.25", "5", "1"])},
    wild={"milestones": st.sampled_from(["1", "0.5,0.9"]), "warmup_epochs": st.sampled_from(["0.5", "2"]),
          "ema": st.sampled_from(["0.9", "1", "0"]), "grad_clip": st.sampled_from(["1", "0"])},
))
def test_training_for_real_answers_drawn_settings(values):
    if values["schedule"] == "multistep" and "milestones" not in values:
        values["milestones"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        answered(runner.invoke(app, ["train", "--dataset", "digits", *options(values), "--epochs", "1",
                                     "--device", "cpu", "--out", str(Path(tmp) / "run")]))


GOOD_OPTION_VALUES = {
    "spp": ["1", "2", "4"], "jitter": ["uniform", "normal"], "normal_std": ["0.5", "1"],
    "reduction": ["mean", "sum", "min", "max"], "std": ["0.1", "0.75"], "distribution": ["normal", "uniform"],
    "p": ["0", "0.5"], "filter_size": ["2", "3", "5"], "placement": ["after", "before", "after-activation"],
}


@st.composite
def conversion(draw):
    """A method with one of its own options, then maybe one part replaced by a wild value."""
    method = draw(st.sampled_from(METHODS))
    own = [k for k in method_options(method) if k in GOOD_OPTION_VALUES]
    jitters = ["independent", "shared"] if method in SHARED_JITTER_METHODS else ["independent"]
    values = {"method": method, "shortcut_jitter": draw(st.sampled_from(jitters))}
    if own:
        option = draw(st.sampled_from(own))
        good = GOOD_OPTION_VALUES[option]
        if option == "placement":  # flc and asap: after or before; blurpool: after or after-activation
            good = [v for v in good if v != ("before" if method == "blurpool" else "after-activation")]
        values[option] = draw(st.sampled_from(good))
    wild = draw(st.sampled_from([None, "method", "option", "value", "shortcut_jitter"]))
    if wild == "method":
        values["method"] = draw(names(METHODS, "SD", "maxblur"))
    elif wild == "option":
        other = draw(st.sampled_from(sorted(GOOD_OPTION_VALUES)))
        values[other] = draw(st.sampled_from(GOOD_OPTION_VALUES[other]))
    elif wild == "value" and own:
        values[option] = draw(st.one_of(INTS, FLOATS, JUNK))
    elif wild == "shortcut_jitter":
        values["shortcut_jitter"] = draw(names(["shared", "Independent"]))
    return values


@settings(SETTINGS, max_examples=20)
@given(conversion())
def test_convert_answers_every_method_and_option(digits_checkpoint, values):
    with tempfile.TemporaryDirectory() as tmp:
        answered(runner.invoke(app, ["convert", str(digits_checkpoint),
                                     "--out", str(Path(tmp) / "c.safetensors"), *options(values)]))


@settings(SETTINGS, max_examples=15)
@given(values=invocation(
    valid={"profile": st.sampled_from(["quick", "cpu", "full"]), "eps": GOOD_EPS,
           "seeds": st.integers(1, 3).map(str), "eval_n": st.integers(1, 100).map(str),
           "model": st.sampled_from([None, *MODELS.names()])},
    wild={"profile": names(["Quick", "huge"]), "eps": EPS, "seeds": INTS, "eval_n": INTS,
          "model": names(["torchvision:resnet18", "resnet-huge"])},
), recipe=st.one_of(st.just("sd-study"), st.just("sd-study"), JUNK))
def test_run_answers_every_input_before_any_work(monkeypatch, values, recipe):
    import robustlab.experiments as experiments

    monkeypatch.setattr(experiments, "run_study", lambda name, out, cfg, **kwargs: SimpleNamespace(seconds=0.0,
                                                                                                   partial=False))
    with tempfile.TemporaryDirectory() as tmp:
        answered(runner.invoke(app, ["run", recipe, *options(values), "--device", "cpu",
                                     "--out", str(Path(tmp) / "study")]))


def test_the_property_can_fail():
    """``answered`` rejects a traceback, a second error line and click's boxed usage error."""

    class Result:
        def __init__(self, output, exit_code, exception=None):
            self.output, self.exit_code, self.exception = output, exit_code, exception

    answered(Result("note: --n 500 > 359 test images\nerror: one line\n", 2, SystemExit(2)))
    with pytest.raises(AssertionError):
        answered(Result("Traceback (most recent call last):\n", 1, RuntimeError("x")))
    with pytest.raises(AssertionError):
        answered(Result("error: one\nerror: two\n", 2, SystemExit(2)))
    with pytest.raises(AssertionError):
        answered(Result("Usage: robustlab evaluate\n╭─ Error ─╮\n│ Invalid value │\n", 2, SystemExit(2)))

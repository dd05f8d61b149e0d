import pytest
import torch
from evaluate_toys import linear_model, noisy_model, toy_data

from robustlab.attacks import EOT, FGSM, PGD
from robustlab.core import ThreatModel
from robustlab.evaluate import Battery, ProgressEvent, run_battery

T = ThreatModel("linf", 0.1)


class _Crash(Exception):
    pass


def _crash_after(k: int, events: list[ProgressEvent]):
    def progress(event: ProgressEvent) -> None:
        events.append(event)
        if event.kind == "batch" and sum(e.kind == "batch" for e in events) == k:
            raise _Crash

    return progress


def _same(a, b) -> None:
    da, db = a.to_dict(), b.to_dict()
    for key in ("clean_acc", "clean_std", "robust_acc", "robust_std", "clean_accs", "robust_accs",
                "indices", "config", "masks", "model_hash", "n"):
        assert da[key] == db[key], key
    for label, s in a.per_attack.items():
        t = b.per_attack[label]
        assert (s.robust_acc, s.seen, s.broken, s.forward_passes, s.backward_passes) == (
            t.robust_acc, t.seen, t.broken, t.forward_passes, t.backward_passes)


@pytest.mark.parametrize("stochastic", [False, True], ids=["deterministic", "stochastic"])
def test_resume_after_a_crash_gives_identical_numbers_and_masks(tmp_path, stochastic):
    if stochastic:
        model = noisy_model(std=0.2)
        x, y = toy_data(model[1:], n=50)
        battery = Battery([FGSM(T), PGD(T, steps=3, grad=EOT(n=2))])
        kw = {"repeats": 2, "ensemble": 2}
    else:
        model = linear_model(hidden=8, seed=1)
        x, y = toy_data(model, n=50, seed=1)
        battery = Battery([FGSM(T), PGD(T, steps=3)])
        kw = {"repeats": 2}
    uninterrupted = run_battery(model, (x, y), battery, batch_size=16, seed=7, **kw)

    events: list[ProgressEvent] = []
    with pytest.raises(_Crash):
        run_battery(model, (x, y), battery, batch_size=16, seed=7, state_dir=tmp_path,
                    progress=_crash_after(3, events), **kw)
    assert events[0].kind == "start" and events[0].total == 8 and events[0].completed == 0
    (folder,) = tmp_path.iterdir()
    assert (folder / "state.safetensors").exists()

    resumed_events: list[ProgressEvent] = []
    resumed = run_battery(model, (x, y), battery, batch_size=16, seed=7, state_dir=tmp_path,
                          progress=resumed_events.append, **kw)
    assert resumed_events[0].kind == "start" and resumed_events[0].completed == 3
    assert sum(e.kind == "batch" for e in resumed_events) == 5  # only the missing batches ran
    assert resumed_events[-1].kind == "end" and resumed_events[-1].completed == 8
    _same(uninterrupted, resumed)

    # a finished state is returned without attacking again
    again_events: list[ProgressEvent] = []
    again = run_battery(model, (x, y), battery, batch_size=16, seed=7, state_dir=tmp_path,
                        progress=again_events.append, **kw)
    assert not any(e.kind == "batch" for e in again_events)
    _same(uninterrupted, again)


def test_another_configuration_gets_its_own_state(tmp_path):
    model = linear_model()
    x, y = toy_data(model, n=20)
    b = Battery([FGSM(T)])
    run_battery(model, (x, y), b, state_dir=tmp_path, seed=0)
    run_battery(model, (x, y), b, state_dir=tmp_path, seed=1)
    run_battery(model, (x, y), b, state_dir=tmp_path, n=10)
    with torch.no_grad():
        model[1].bias.add_(1.0)
    run_battery(model, (x, y), b, state_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 4


def test_a_damaged_state_is_ignored_with_a_warning(tmp_path):
    model = linear_model()
    x, y = toy_data(model, n=20)
    b = Battery([FGSM(T)])
    first = run_battery(model, (x, y), b, state_dir=tmp_path)
    (folder,) = tmp_path.iterdir()
    state = folder / "state.safetensors"
    data = bytearray(state.read_bytes())
    data[-1] ^= 0xFF
    state.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="ignoring unreadable evaluation state"):
        again = run_battery(model, (x, y), b, state_dir=tmp_path)
    _same(first, again)


# --------------------------------------------------------- saves inside a batch (issue 13.13)
def _battery_3():
    return Battery([FGSM(T), PGD(T, steps=3), PGD(T, steps=2, loss="cw")], name="three")


def _crash_at(batch: int, label: str, events: list[ProgressEvent], exc: type[BaseException] = _Crash):
    def progress(event: ProgressEvent) -> None:
        events.append(event)
        if event.kind == "attack" and event.batch == batch and event.attack == label:
            raise exc

    return progress


def _attacks_done(folder):
    from robustlab.core.checkpoint import read_checkpoint

    tensors, _ = read_checkpoint(folder / "state.safetensors")
    return tensors["attacks_done"].tolist(), tensors["done"].tolist()


@pytest.mark.parametrize("stochastic", [False, True], ids=["deterministic", "stochastic"])
def test_resume_from_a_mid_batch_save_skips_the_finished_attacks(tmp_path, stochastic):
    if stochastic:
        model = noisy_model(std=0.2)
        x, y = toy_data(model[1:], n=40)
        kw = {"ensemble": 2}
    else:
        model = linear_model(hidden=8, seed=2)
        x, y = toy_data(model, n=40, seed=2)
        kw = {}
    battery = _battery_3()
    uninterrupted = run_battery(model, (x, y), battery, batch_size=16, seed=3, **kw)

    events: list[ProgressEvent] = []
    with pytest.raises(_Crash):
        run_battery(model, (x, y), battery, batch_size=16, seed=3, state_dir=tmp_path, save_interval=0,
                    progress=_crash_at(1, "pgd", events), **kw)
    (folder,) = tmp_path.iterdir()
    # batch 0 finished; batch 1 saved after its first two attacks (fgsm, pgd), before the third
    assert _attacks_done(folder) == ([[3, 2, 0]], [[True, False, False]])
    assert [(e.batch, e.attack) for e in events if e.kind == "saved"] == [(0, "fgsm"), (0, "pgd"), (1, "fgsm"), (1, "pgd")]

    resumed_events: list[ProgressEvent] = []
    resumed = run_battery(model, (x, y), battery, batch_size=16, seed=3, state_dir=tmp_path,
                          progress=resumed_events.append, **kw)
    ran = [(e.batch, e.attack) for e in resumed_events if e.kind == "attack"]
    assert ran == [(1, "pgd#2"), (2, "fgsm"), (2, "pgd"), (2, "pgd#2")]  # fgsm, pgd not rerun on batch 1
    _same(uninterrupted, resumed)
    assert resumed.config["indices_sha256"] == uninterrupted.config["indices_sha256"]


def test_without_an_elapsed_interval_a_batch_is_saved_only_when_it_ends(tmp_path):
    model = linear_model(hidden=8, seed=2)
    x, y = toy_data(model, n=40, seed=2)
    events: list[ProgressEvent] = []
    with pytest.raises(_Crash):
        run_battery(model, (x, y), _battery_3(), batch_size=16, seed=3, state_dir=tmp_path,
                    save_interval=3600, progress=_crash_at(1, "pgd", events))
    (folder,) = tmp_path.iterdir()
    assert _attacks_done(folder) == ([[3, 0, 0]], [[True, False, False]])
    assert not any(e.kind == "saved" for e in events)


def test_an_interrupt_saves_the_last_finished_attack_and_resumes_exactly(tmp_path):
    model = linear_model(hidden=8, seed=2)
    x, y = toy_data(model, n=40, seed=2)
    uninterrupted = run_battery(model, (x, y), _battery_3(), batch_size=16, seed=3)
    events: list[ProgressEvent] = []
    with pytest.raises(KeyboardInterrupt):
        run_battery(model, (x, y), _battery_3(), batch_size=16, seed=3, state_dir=tmp_path,
                    save_interval=3600, progress=_crash_at(1, "pgd", events, KeyboardInterrupt))
    (folder,) = tmp_path.iterdir()
    assert _attacks_done(folder) == ([[3, 2, 0]], [[True, False, False]])
    assert [(e.kind, e.batch, e.attack) for e in events[-1:]] == [("saved", 1, "pgd")]
    _same(uninterrupted, run_battery(model, (x, y), _battery_3(), batch_size=16, seed=3, state_dir=tmp_path))


def test_state_dir_for_a_run_folder_and_bad_intervals(tmp_path):
    from robustlab.core import InputError
    from robustlab.evaluate import STATE_DIR_NAME, state_dir_for

    assert state_dir_for(tmp_path / "runs" / "x") == tmp_path / "runs" / "x" / "eval-state"
    assert STATE_DIR_NAME == "eval-state"
    model = linear_model()
    x, y = toy_data(model, n=8)
    for bad in (-1, True, "60"):
        with pytest.raises(InputError, match="save_interval must be a number of seconds >= 0"):
            run_battery(model, (x, y), Battery([FGSM(T)]), save_interval=bad)

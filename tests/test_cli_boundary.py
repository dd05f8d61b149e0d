"""The CLI's one error boundary: every command's library errors leave as one ``error:`` line."""

import pytest
import typer
from typer.testing import CliRunner

from robustlab.cli import app
from robustlab.cli.errors import Commands, boundary, on_interrupt
from robustlab.core import InputError

runner = CliRunner()


def one_error_line(r, code: int = 2) -> str:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


def _commands() -> dict[str, object]:
    """Every command of ``robustlab``, by its path (``analyze gradients``), as typer registered it."""
    found = {c.name or c.callback.__name__: c.callback for c in app.registered_commands}
    for group in app.registered_groups:
        for c in group.typer_instance.registered_commands:
            found[f"{group.name} {c.name or c.callback.__name__}"] = c.callback
    return found


def test_every_command_is_guarded_by_the_one_boundary():
    guarded = boundary()(lambda: None).__code__  # every guarded command runs this same code
    commands = _commands()
    assert set(commands) == set(BAD_INPUTS)  # a new command needs its case below
    for name, callback in commands.items():
        assert callback.__code__ is guarded, f"{name} is not wrapped in cli.errors.boundary"


BAD_INPUTS = {
    "info": ([], "cannot use"),  # nothing to type wrong: a failing OS call stands in
    "train": (["--dataset", "nope"], "unknown dataset 'nope'; known datasets: "),
    "evaluate": (["{ckpt}", "--battery", "nope", "--device", "cpu"], "unknown battery 'nope'; known batteries: "),
    "leaderboard": (["--ledger", "{tmp}/none.sqlite"], "no ledger at "),
    "audit": (["{ckpt}", "--battery", "nope", "--device", "cpu", "--out", "{tmp}/audit"],
              "unknown --battery 'nope': not a battery ("),
    "convert": (["{ckpt}", "--out", "{tmp}/x.safetensors", "--method", "avgpool", "--spp", "2"],
                "--spp does not apply to --method avgpool; it takes no method option"),
    "run": (["sd-studdy"], "unknown recipe 'sd-studdy'; known recipes: "),
    "demo": (["--battery", "nope"], "unknown battery 'nope'; known batteries: "),
    "analyze dcs-bounds": (["--eps-c", "0.5", "--eps-l", "0.5", "--size", "0"], "size N must be a finite number > 0"),
    "analyze gradients": (["{ckpt}", "--dataset", "digits", "--device", "cpu"],
                          "the checkpoint was trained on fashion-mnist, not digits; pass --force-dataset"),
}


@pytest.mark.parametrize("command", sorted(BAD_INPUTS))
def test_every_commands_library_errors_are_one_line(command, fashion_checkpoint, tmp_path, monkeypatch):
    args, expected = BAD_INPUTS[command]
    if command == "info":
        def broken() -> str:
            raise PermissionError(13, "Permission denied", "/proc/version")

        monkeypatch.setattr("robustlab.cli.info.platform.python_version", broken)
    out = tmp_path / "out"
    argv = [*command.split(), *(a.format(ckpt=fashion_checkpoint, tmp=tmp_path) for a in args)]
    if command in ("train", "demo"):
        argv += ["--out", str(out)]
    line = one_error_line(runner.invoke(app, argv))
    assert expected in line, line
    assert not out.exists() and not (tmp_path / "x.safetensors").exists()


# --- the boundary itself, on a toy command ----------------------------------------------------


def _toy(body) -> typer.Typer:
    toy = typer.Typer(cls=Commands, add_completion=False, pretty_exceptions_enable=False)

    @toy.command()
    @boundary(ema_decay="--ema")
    def work(
        max_steps: int = 1,
        ema: float = 0.0,
    ) -> None:
        body()

    @toy.command()
    def other() -> None:
        pass

    return toy


def _raise(error: BaseException):
    def body() -> None:
        raise error

    return body


def test_the_boundary_speaks_in_flags():
    line = one_error_line(runner.invoke(_toy(_raise(InputError("max_steps must be >= 1; ema_decay=0.5 is too low"))),
                                        ["work"]))
    assert line == "error: --max-steps must be >= 1; --ema 0.5 is too low"


def test_the_boundary_names_the_path_of_an_os_error():
    line = one_error_line(runner.invoke(_toy(_raise(PermissionError(13, "Permission denied", "/x/y"))), ["work"]))
    assert line == "error: cannot use /x/y: Permission denied; check the path and its permissions"


def test_ctrl_c_says_what_was_saved_inside_on_interrupt():
    def interrupted() -> None:
        with on_interrupt(lambda: "interrupted: 2 of 4 saved; rerun to resume"):
            raise KeyboardInterrupt

    line = one_error_line(runner.invoke(_toy(interrupted), ["work"]), code=130)
    assert line == "error: interrupted: 2 of 4 saved; rerun to resume"
    r = runner.invoke(_toy(_raise(KeyboardInterrupt())), ["work"])  # before any work: nothing to say
    assert r.exit_code == 130 and "Traceback" not in r.output


def test_other_errors_are_not_swallowed():
    r = runner.invoke(_toy(_raise(ZeroDivisionError("a bug"))), ["work"])
    assert isinstance(r.exception, ZeroDivisionError)  # a bug stays a traceback, not an error line

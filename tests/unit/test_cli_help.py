"""What `inferpack --help` shows a new user: whole command summaries and no text lost to rich markup."""

from __future__ import annotations

from typer.testing import CliRunner

from inferpack.cli import app

runner = CliRunner()


def _help(*args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "400"}, terminal_width=400)
    assert result.exit_code == 0, result.output
    return result.output


def test_command_summaries_are_one_line_each() -> None:
    # Docstring line breaks used to be kept: "... cheapest mix of instance types within the" and, on the
    # next line, "latency objective (default) ...".
    text = _help()
    assert "cheapest mix of instance types within the latency objective (default)" in text
    assert "(left by deleted versions or models)" in _help("models")


def test_router_help_keeps_its_settings_name() -> None:
    # "the [router] settings" lost "[router]" to rich markup: "the  settings".
    text = " ".join(_help("router").split())
    assert "the router settings (`router` in the config file, INFERPACK_ROUTER__*)" in text
    assert "the settings" not in text

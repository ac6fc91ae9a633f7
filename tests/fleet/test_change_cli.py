"""`inferpack restart` without a running fleet: a clear error, and nothing created; change requests."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from inferpack.cli import app
from inferpack.errors import FleetError
from inferpack.fleet.change import ChangeRequest, is_running, new_request

runner = CliRunner()


def test_restart_without_a_running_fleet_says_how_to_start_one(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["restart", "--run-dir", str(run_dir)])
    # the FleetError that `inferpack.cli.main` turns into a message and exit status 2
    assert isinstance(result.exception, FleetError)
    assert "no running fleet" in str(result.exception) and "inferpack up" in str(result.exception)
    assert not run_dir.exists()
    assert not is_running(run_dir)


def test_restart_help_names_force() -> None:
    result = runner.invoke(app, ["restart", "--help"])
    assert result.exit_code == 0 and "--force" in result.output and "one server at a time" in result.output


def test_request_round_trips_and_names_its_author() -> None:
    request = new_request("restart", servers=["server-1"], force=True)
    again = ChangeRequest.model_validate_json(request.model_dump_json())
    assert again == request and again.requested_by.startswith("pid ")
    assert new_request("restart").id != request.id

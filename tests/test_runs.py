"""littlehelp.runs.train: a finished run folder is reused without starting a process; a run that fails
stops the script with its log's last line and the log's path (in a subprocess) or with its printed
error (in process)."""

import pytest

from littlehelp import runs
from littlehelp.models import build_model
from tests.helpers import TINY_DECODER, random_params, save_params_only


def test_a_folder_holding_its_final_step_is_reused(tmp_path, capsys):
    save_params_only(random_params(build_model(TINY_DECODER), 0), tmp_path / "run")  # step 0
    assert runs.train(tmp_path / "run", "no/such.gin", {}, final_step=0) == 0.0
    assert "run: step 0 is there, reused" in capsys.readouterr().out
    assert not (tmp_path / "run.log").exists()


def test_a_failed_run_stops_with_its_last_log_line(tmp_path):
    with pytest.raises(SystemExit, match=r"training .*run failed \(exit 2\): .*no/such\.gin.* \(full log: .*run\.log\)"):
        runs.train(tmp_path / "run", "no/such.gin", {"BATCH_SIZE": 4}, final_step=3)
    assert "no/such.gin" in (tmp_path / "run.log").read_text().strip().splitlines()[-1]


def test_a_failed_run_in_process_stops_after_printing_its_error(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"training .*run failed \(exit 2\); its error is printed above"):
        runs.train(tmp_path / "run", "no/such.gin", {"BATCH_SIZE": 4}, final_step=3, in_process=True)
    assert "no/such.gin" in capsys.readouterr().err

"""`tools/plot_learning_curves.py`: the curves read from `metrics.jsonl` and the figure."""

import json

import numpy as np
import pytest
from conftest import load_tool


def _write(workdir, rows):
  workdir.mkdir()
  with open(workdir / "metrics.jsonl", "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)


def test_curves_are_the_rows_with_the_metric_in_minutes_since_the_first_row(tmp_path, capsys):
  tool = load_tool("plot_learning_curves")
  _write(tmp_path / "a", [
      {"step": 10, "wall_time": 1000.0, "train/gen_loss": 3.0},
      {"step": 20, "wall_time": 1030.0, "train/gen_loss": 2.0},
      {"step": 20, "wall_time": 1090.0, "real/pesq": 1.5, "val/mel_distance": 0.9},
      {"step": 40, "wall_time": 1300.0, "real/pesq": None, "val/mel_distance": 0.7},
  ])
  _write(tmp_path / "b", [{"step": 5, "wall_time": 50.0, "real/pesq": 2.0}])
  curves = tool.read_curves(str(tmp_path / "a"), ("real/pesq", "val/mel_distance", "x"))
  np.testing.assert_allclose(curves["real/pesq"], [[20, 1.5, 1.5]])
  np.testing.assert_allclose(curves["val/mel_distance"], [[20, 1.5, 0.9], [40, 5.0, 0.7]])
  assert curves["x"].shape == (0, 3)

  output = tmp_path / "out" / "curves.png"
  assert tool.main([f"--run=A={tmp_path / 'a'}", f"--run=B={tmp_path / 'b'}",
                    "--metrics=real/pesq,val/mel_distance", f"--output={output}"]) == 0
  assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  printed = capsys.readouterr().out
  assert "A: real/pesq 1.5 (step 20, 1.5 min); val/mel_distance 0.7 (step 40, 5.0 min)" in printed
  assert "B: real/pesq 2 (step 5, 0.0 min)" in printed


def test_a_workdir_without_metrics_or_wall_times_is_a_clear_error(tmp_path, capsys):
  tool = load_tool("plot_learning_curves")
  assert tool.main([f"--run=A={tmp_path}", f"--output={tmp_path / 'x.png'}"]) == 1
  assert "no metrics.jsonl" in capsys.readouterr().err
  _write(tmp_path / "old", [{"step": 1, "train/gen_loss": 1.0}])
  assert tool.main([f"--run=A={tmp_path / 'old'}", f"--output={tmp_path / 'x.png'}"]) == 1
  assert "without wall_time" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    tool.main([f"--run={tmp_path}", f"--output={tmp_path / 'x.png'}"])

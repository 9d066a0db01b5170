"""The robot computer's install: the base distribution (no extras) in a fresh virtual environment holds
no torch, transformers or MuJoCo, passes `pip check`, and runs the robot runner on an exported policy."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from base_install import create_base_venv, pip_check, present_heavy_packages  # noqa: E402

from helpers import make_model  # noqa: E402

FAKE_ARM = textwrap.dedent('''
    import numpy as np

    class Arm:
        """Random camera frames; counts what it is sent and whether it was stopped."""
        def __init__(self, log):
            self.log, self.sent, self.rng = log, 0, np.random.default_rng(0)
        def get_observation(self):
            return {"image": self.rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                    "state": np.zeros(4, np.float32)}
        def apply_action(self, action):
            assert action.shape == (4,) and np.all(np.isfinite(action))
            self.sent += 1
        def stop(self):
            with open(self.log, "w") as f:
                f.write(str(self.sent))
''')


@pytest.mark.timeout(900)
def test_the_base_install_runs_the_robot_runner_without_torch(tmp_path):
    from vla.export import export

    model = make_model(tmp_path)
    model.save_pretrained(tmp_path / "ckpt")
    export(tmp_path / "ckpt", tmp_path / "export", parity_inputs=2)

    python = create_base_venv(tmp_path / "venv")
    check = pip_check(python)
    assert check.returncode == 0, check.stdout + check.stderr
    assert present_heavy_packages(python) == []

    work = tmp_path / "robot"  # not the clone: `policies` must come from the installed distribution
    work.mkdir()
    (work / "fake_arm.py").write_text(FAKE_ARM)
    log = work / "stopped.txt"
    run = subprocess.run([str(python), "-m", "policies.robot_runner", "--robot", "fake_arm:Arm", "--robot-kw",
                          f"log={log}", "--policy", str(tmp_path / "export"), "--prompt", "reach the red cube",
                          "--rate", "20", "--max-steps", "10"],
                         cwd=work, capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(work)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)["steps"] == 10
    assert log.read_text() == "10"  # ten actions sent, then the robot was stopped
    where = subprocess.run([str(python), "-c", "import policies; print(policies.__file__)"], cwd=work,
                           capture_output=True, text=True, check=True).stdout
    assert str(tmp_path / "venv") in where

"""User mistakes on the command line: one line on stderr naming what and where, exit code 2,
before any expensive work."""

import pytest

from vla0.cli import main


@pytest.mark.parametrize("argv,message", [
    (["collect", "--tasks", "reach-v3,fly-v3", "--episodes", "1", "--out", "{tmp}/d"],
     "unknown metaworld task 'fly-v3'; valid tasks: "),
    (["eval", "--policy", "expert", "--tasks", "fly-v3", "--out", "{tmp}/e"], "unknown metaworld task 'fly-v3'"),
    (["eval", "--policy", "{tmp}", "--tasks", "reach-v3", "--out", "{tmp}/e"], "is not a vla0 policy or run folder"),
    (["eval", "--env", "gazebo", "--policy", "expert", "--tasks", "x", "--out", "{tmp}/e"], "unknown env 'gazebo'; registered environments: libero, metaworld"),
    (["train", "--model", "{tmp}", "--dataset", "{tmp}", "--out", "{tmp}/r", "--steps", "1"], "meta/info.json"),
    (["serve", "--policy", "{tmp}/none"], "{tmp}/none"),
])
def test_one_line_error(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.replace("{tmp}", str(tmp_path)) in err, err

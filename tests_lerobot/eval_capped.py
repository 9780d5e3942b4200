"""`lerobot-eval` with Meta-World episodes capped at N steps (argv[1]), to keep the test short:
lerobot 0.4.4 runs every Meta-World episode to the benchmark's 500 steps, about 7 minutes here for
an untrained policy. Everything else is the real lerobot-eval."""

import sys

from lerobot.envs import metaworld

cap = int(sys.argv.pop(1))
_make = metaworld.MetaworldEnv._make_envs_task


def _capped(self, name):
    env = _make(self, name)
    env.max_path_length = cap
    return env


metaworld.MetaworldEnv._make_envs_task = _capped

from lerobot.scripts.lerobot_eval import main  # noqa: E402

main()

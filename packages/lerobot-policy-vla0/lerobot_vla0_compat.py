"""lerobot 0.4.4 on transformers 5 (which vla0 needs; lerobot 0.4 was written for transformers 4).

lerobot imports every built-in policy at start-up, and one module of them, GR00T's groot_n1, cannot
even be defined on transformers 5 (its config dataclass subclasses transformers' PretrainedConfig,
a dataclass with defaults there). A `.pth` line (`import lerobot_vla0_compat`, written by
`make test-lerobot` into the LeRobot venv) puts a stand-in for that one module in sys.modules
before lerobot loads: every other policy, and vla0, is untouched; GR00T fails when used, saying why.
This module imports nothing heavy: it runs at every interpreter start of that venv.
"""

import sys
import types

_NAME = "lerobot.policies.groot.groot_n1"


class _GrootUnavailable:
    def __init__(self, *args, **kwargs):
        raise ImportError("lerobot's GR00T policy needs transformers<5; this LeRobot environment has "
                          "transformers 5 for vla0 (see lerobot_vla0_compat)")

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        cls()


def _stand_in(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (_GrootUnavailable,), {})


if _NAME not in sys.modules:
    _module = types.ModuleType(_NAME, __doc__)
    _module.__getattr__ = _stand_in
    sys.modules[_NAME] = _module

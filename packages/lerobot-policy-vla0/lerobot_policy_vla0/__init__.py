"""vla0 as a LeRobot policy type. LeRobot imports this package at start-up (its name starts with
`lerobot_policy_`), which registers `--policy.type=vla0`; the factory then finds
modeling_vla0.VLA0Policy and processor_vla0.make_vla0_pre_post_processors by their names."""

from lerobot_policy_vla0.configuration_vla0 import VLA0Config

__all__ = ["VLA0Config"]

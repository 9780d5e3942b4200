"""Drive an SO-100 arm with a policy served by `vla0 serve` (LeRobot's robot API).

    # on the GPU machine
    vla0 serve --policy runs/so100_pick --host 0.0.0.0 --api-key $KEY
    # on the robot machine (pip install lerobot[feetech]; vla0 for the client only)
    python examples/so100_robot_loop.py --server ws://gpu-box:8000 --api-key $KEY \
        --robot-port /dev/ttyACM0 --cameras front=0,wrist=2 --task "put the cube in the bowl"

Each tick: read joints + cameras -> one observation -> the next action -> the motors, at --fps,
with inference overlapped (vla0_client.RealTimeLoop): the arm keeps executing its current chunk
while the server computes the next one. --execution rtc (default) sends the actions the arm is
committed to with each request, so the new chunk continues them (real-time chunking); async
switches naively, async-ensemble averages, sync stops the arm while the model thinks. The policy must have been trained on the same camera names and joint order (LeRobot's
SO-100 datasets: shoulder_pan, shoulder_lift, elbow_flex, wrist_flex, wrist_roll, gripper).
"""

from __future__ import annotations

import argparse

import numpy as np

from vla0_client import EXECUTION_MODES, PolicyClient, RealTimeLoop


def make_robot(port: str, robot_id: str, cameras: dict[str, str], width: int, height: int, fps: int):
    from lerobot.cameras.opencv.configuration_opencv import OpenCVCameraConfig
    from lerobot.robots.utils import make_robot_from_config
    try:  # lerobot >= 0.4 merged SO-100/101 into so_follower
        from lerobot.robots.so_follower import SO100FollowerConfig
    except ImportError:
        from lerobot.robots.so100_follower import SO100FollowerConfig
    cams = {name: OpenCVCameraConfig(index_or_path=int(src) if src.isdigit() else src, width=width, height=height,
                                     fps=fps) for name, src in cameras.items()}
    # max_relative_target caps each step's joint motion: a safety net for a policy's first runs
    return make_robot_from_config(SO100FollowerConfig(port=port, id=robot_id, cameras=cams, max_relative_target=10.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default="ws://127.0.0.1:8000")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--robot-port", required=True, help="serial port of the follower arm, e.g. /dev/ttyACM0")
    ap.add_argument("--robot-id", default="so100_follower", help="LeRobot calibration id")
    ap.add_argument("--cameras", required=True, help="name=index_or_path,... named as in the training data")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--task", required=True)
    ap.add_argument("--fps", type=float, default=10.0, help="control rate")
    ap.add_argument("--execution", default="rtc", choices=EXECUTION_MODES, help="how chunks run while the model thinks")
    ap.add_argument("--latency-steps", type=int, default=None,
                    help="inference latency in control steps (default: measured, the slowest of the last 10)")
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()

    cameras = dict(item.split("=", 1) for item in args.cameras.split(","))
    client = PolicyClient(args.server, api_key=args.api_key)
    meta = client.metadata
    if sorted(meta["cameras"]) != sorted(cameras):
        raise SystemExit(f"the policy wants cameras {meta['cameras']}, got {sorted(cameras)}")
    robot = make_robot(args.robot_port, args.robot_id, cameras, args.width, args.height, int(args.fps))
    joints = list(robot.action_features)  # "shoulder_pan.pos", ...: the order of state and action vectors
    if meta["action_dim"] != len(joints):
        raise SystemExit(f"the policy acts in {meta['action_dim']} dimensions; the arm has {len(joints)} joints")

    def observe() -> dict:
        raw = robot.get_observation()
        obs = {f"observation.images.{cam}": np.asarray(raw[cam], np.uint8) for cam in cameras}
        obs["observation.state"] = np.array([raw[j] for j in joints], np.float32)
        obs["task"] = args.task
        return obs

    loop = RealTimeLoop(client, fps=args.fps, execution=args.execution, latency_steps=args.latency_steps)
    robot.connect()
    loop.reset()  # a new episode: no chunks from a previous run
    try:
        loop.run(observe, lambda action: robot.send_action({j: float(a) for j, a in zip(joints, action)}),
                 steps=int(args.seconds * args.fps))
        print(f"inference latency, last requests: {[round(s, 3) for s in loop.latencies]} s; "
              f"executor: {loop.executor.episode_stats(0)}")
    finally:
        robot.disconnect()
        loop.close()
        client.close()


if __name__ == "__main__":
    main()

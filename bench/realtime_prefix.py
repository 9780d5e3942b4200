"""How much the text head's continuation leans on a forced prefix (why text RTC can lose success).

On 48 dataset frames of the study's text policy (bench/realtime.py's --out), the error of rows
d..H-1 against the demonstration, for chunks decoded (a) unforced, (b) with the demonstration's own
first d actions forced, (c) with the policy's own plan from 2 steps earlier forced (what a closed
loop with latency 2 commits), and (d) that stale plan itself. Writes bench/results/realtime_prefix.json.

    python bench/realtime_prefix.py --out runs/rt
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/rt")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--result", default=str(RESULTS / "realtime_prefix.json"))
    args = ap.parse_args()
    from vla0.data.lerobot_dataset import load_lerobot
    from vla0.io import write_json_atomic
    from vla0.policy.policy import VLA0Policy

    out = Path(args.out)
    policy = VLA0Policy.from_pretrained(out / "run")
    H, lag = policy.config.chunk_size, 2
    ds = load_lerobot(out / "data", cameras=policy.config.cameras)
    episode = np.asarray(ds.episode_index)
    rng = np.random.default_rng(0)
    rows = [int(r) for r in rng.choice(np.arange(lag, len(ds.action) - H), args.frames, replace=False)
            if episode[r - lag] == episode[r] == episode[r + H - 1]]

    def obs_at(idx):
        o = {k: ds.images[k][idx] for k in policy.config.image_keys}
        o["task"] = [ds.tasks[int(ds.task_index[i])] for i in idx]
        return o

    demo = np.stack([ds.action[i:i + H] for i in rows])
    plain = policy.predict_action_chunk(obs_at(rows))
    stale = policy.predict_action_chunk(obs_at([i - lag for i in rows]))
    report = {"frames": len(rows), "chunk_size": H, "lag": lag, "mean_abs_error_rows_d_on": {}}
    for d in (2, 4):
        forced_demo = policy.predict_action_chunk(obs_at(rows), prefix=list(demo), committed_steps=[d] * len(rows))
        forced_own = policy.predict_action_chunk(obs_at(rows), prefix=[c[lag:] for c in stale],
                                                 committed_steps=[d] * len(rows))
        err = lambda x: float(np.abs(x[:, d:] - demo[:, d:]).mean())  # noqa: E731
        report["mean_abs_error_rows_d_on"][f"d{d}"] = {
            "unforced": err(plain), "forced_demo_prefix": err(forced_demo), "forced_own_stale_plan": err(forced_own),
            "stale_plan_itself": float(np.abs(stale[:, lag + d:] - demo[:, d:H - lag]).mean())}
    write_json_atomic(report, Path(args.result))
    print(report)


if __name__ == "__main__":
    main()

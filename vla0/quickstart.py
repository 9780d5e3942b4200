"""`vla0 quickstart`: the whole VLA-0 loop on a laptop CPU, in about 20 minutes.

collect expert demos (Meta-World) -> build the embedded tiny Qwen2.5-VL -> train (the
"quickstart" recipe, vla0.train.recipes) -> closed-loop evaluation on held-out seeds, next to the
expert and a random policy -> report. Each phase skips itself when its output already exists, so
an interrupted quickstart resumes.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vla0.io import write_file_atomic, write_json_atomic, write_text_atomic
from vla0.options import option

ENV = "metaworld"


@dataclass
class QuickstartConfig:
    out: str = option("runs/quickstart", "output folder (phases already done there are skipped)")
    tasks: list[str] = option(help="Meta-World tasks",
                              default_factory=lambda: ["reach-v3", "button-press-topdown-v3", "drawer-open-v3"])
    camera_size: list[int] = option(help="rendered HxW per camera", default_factory=lambda: [64, 64])
    demos_per_task: int = option(50, "expert demonstrations per task (seeds collect-seed upward)")
    collect_seed: int = option(0, "demos use seeds collect-seed ...")
    eval_seed: int = option(10_000, "... evaluation seeds eval-seed ... are positions never seen in training")
    eval_episodes: int = option(20, "held-out episodes per task")
    recipe: str = option("quickstart", "training recipe (vla0.train.recipes)")
    steps: int | None = option(None, "training steps (default: the recipe's)")
    training: dict = option(cli=False, default_factory=dict)  # further overrides of the recipe's values
    num_workers: int = option(2, "env worker processes", flag="--workers")
    progress: bool = option(True, "progress bars")


def run_quickstart(cfg: QuickstartConfig | None = None) -> dict:
    from vla0.envs.base import get_env
    from vla0.envs.collect import collect
    from vla0.eval.baselines import ExpertPolicy, RandomPolicy
    from vla0.eval.evaluate import evaluate
    from vla0.eval.report import compare_table, plot_compare
    from vla0.model.tiny import init_model
    from vla0.policy.policy import VLA0Policy
    from vla0.train.curves import plot_loss
    from vla0.train.recipes import recipe
    from vla0.train.trainer import TrainConfig, train

    cfg = cfg or QuickstartConfig()
    family = get_env(ENV)
    family.check_tasks(cfg.tasks, cfg.eval_episodes, "quickstart")
    training = {**recipe(cfg.recipe), **cfg.training}
    if cfg.steps is not None:
        training["steps"] = cfg.steps
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic({**asdict(cfg), "training": training}, out / "quickstart_config.json")
    timings: dict[str, float] = {}

    def phase(name: str, done: bool, fn) -> None:
        if done:
            print(f"[quickstart] {name}: already done, skipping")
            return
        print(f"[quickstart] {name} ...")
        t0 = time.perf_counter()
        fn()
        timings[name] = round(time.perf_counter() - t0, 1)

    data, model, run = out / "data", out / "model", out / "run"
    env_kwargs = dict(env=ENV, cameras=tuple(training["cameras"]), image_size=tuple(cfg.camera_size),
                      num_workers=cfg.num_workers)
    phase("collect", (data / "meta" / "info.json").exists(), lambda: collect(
        cfg.tasks, cfg.demos_per_task, cfg.collect_seed, data, progress=cfg.progress, **env_kwargs))
    phase("init-model", (model / "config.json").exists(), lambda: init_model("tiny", model))
    phase("train", (run / "policy" / "vla0_policy.json").exists(), lambda: train(TrainConfig(
        model=str(model), dataset=str(data), out=str(run), **training, progress=cfg.progress,
        resume=(run / "checkpoints" / "latest").exists())))
    plot_loss(run / "train_log.jsonl", out / "training_loss.png")

    results = {}
    policies = {"vla0": lambda: VLA0Policy.from_pretrained(run), "expert": ExpertPolicy,
                "random": lambda: RandomPolicy.for_env(family, seed=0)}
    for name, make in policies.items():
        folder = out / "eval" / name
        phase(f"eval-{name}", (folder / "results.json").exists(), lambda: evaluate(
            make(), cfg.tasks, cfg.eval_episodes, cfg.eval_seed, folder, progress=cfg.progress,
            batch_envs=cfg.eval_episodes, **env_kwargs))
        results[name] = json.loads((folder / "results.json").read_text())

    write_json_atomic(results["vla0"], out / "results.json")
    # vla0's evaluation report, next to its results.json (self-contained, so a copy is complete)
    write_file_atomic(out / "report.html", lambda tmp: shutil.copyfile(out / "eval" / "vla0" / "report.html", tmp))
    plot_compare(results, out / "success_rates.png")
    table = compare_table(results)
    previous = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
    previous.update(timings)
    write_json_atomic(previous, out / "timings.json")
    write_text_atomic(out / "summary.md", f"# vla0 quickstart\n\n```\n{table}\n```\n\nphase seconds: {previous}\n")
    print(table)
    print(f"[quickstart] report in {out}: report.html, results.json, success_rates.png, training_loss.png, "
          "eval/*/videos")
    return results

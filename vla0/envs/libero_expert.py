"""A scripted expert for the ten LIBERO-Object tasks ("pick up the X and place it in the basket").

It reads the simulator's privileged state once, after the wait steps (objects in the official
init states sit partly inside the floor and jump up to 10 cm in the first steps), plans a
top-down grasp, and then drives LIBERO's own OSC_POSE controller with proportional control on
its delta actions (1 = 5 cm or 0.5 rad per step) through hover, descend, close, lift, carry,
lower and open.

The grasp: the object's collision geometry (mesh vertices, primitive corners) gives its
footprint, top and bottom. The hand is about 21 cm long along the fingers' closing axis, so the
yaw is chosen (among 12 candidates, 15 degrees apart) to keep that footprint clear of the
neighbouring objects while the object stays narrow enough between the fingers. LIBERO-Object's
success predicate (the object inside the basket's region) fires while the object is still held,
so most episodes end during the lowering, before the release.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

HAND_LENGTH = 0.21  # m, along the closing axis
HAND_WIDTH = 0.07  # m, across it
MAX_OPENING = 0.075  # m, what fits between the open fingers (with a margin)
POS_SCALE, ROT_SCALE = 0.05, 0.5  # what an action of 1 moves per step
CLOSE_STEPS, OPEN_STEPS = 10, 6


def geom_points(sim, body_id: int) -> np.ndarray:
    """World points of the collision geoms of a body and its descendants: mesh vertices, box
    corners, cylinder rims (MuJoCo geom types: 2 sphere, 3 capsule, 5 cylinder, 6 box, 7 mesh)."""
    model, data = sim.model, sim.data
    bodies = {body_id}
    for b in range(model.nbody):  # parents come before children in MuJoCo's body order
        if model.body_parentid[b] in bodies and b != 0:
            bodies.add(b)
    pts = []
    ring = np.array([[np.cos(a), np.sin(a)] for a in np.linspace(0, 2 * np.pi, 12, endpoint=False)])
    for g in range(model.ngeom):
        if model.geom_bodyid[g] not in bodies or (model.geom_contype[g] == 0 and model.geom_conaffinity[g] == 0):
            continue
        kind, size = model.geom_type[g], model.geom_size[g]
        if kind == 7:
            mesh = model.geom_dataid[g]
            start, n = model.mesh_vertadr[mesh], model.mesh_vertnum[mesh]
            local = np.asarray(model.mesh_vert[start:start + n])
        elif kind == 6:
            local = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * size
        elif kind in (3, 5):
            half = size[1] + (size[0] if kind == 3 else 0.0)
            local = np.concatenate([np.c_[ring * size[0], np.full(12, z)] for z in (-half, half)])
        elif kind == 2:
            local = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * size[0]
        else:
            continue
        pts.append(data.geom_xpos[g] + local @ data.geom_xmat[g].reshape(3, 3).T)
    if not pts:
        raise RuntimeError(f"body {model.body_id2name(body_id)} has no collision geometry")
    return np.concatenate(pts)


def clearance(centre: np.ndarray, axis: np.ndarray, others: list[np.ndarray]) -> float:
    """How far (m) the hand's footprint at `centre`, long along the closing `axis`, stays from
    the other objects' points (0 when it overlaps one)."""
    across = np.array([-axis[1], axis[0]])
    gap = 0.1
    for pts in others:
        r = pts[:, :2] - centre
        dx = np.maximum(np.abs(r @ axis) - HAND_LENGTH / 2, 0)
        dy = np.maximum(np.abs(r @ across) - HAND_WIDTH / 2, 0)
        gap = min(gap, float(np.hypot(dx, dy).min()))
    return gap


def choose_grasp(target: np.ndarray, others: list[np.ndarray]) -> tuple[float, np.ndarray]:
    """The closing-axis yaw (radians, world frame) and the grasp point (x, y) whose hand
    footprint stays clearest of the other objects, among the yaws across which the object fits
    between the fingers; the grasp point may slide along the object (across the closing axis)
    to move the hand away from a neighbour."""
    centre = (target[:, :2].min(0) + target[:, :2].max(0)) / 2
    best, best_score = (0.0, centre), -np.inf
    for yaw in np.arange(12) * np.pi / 12:
        axis, across = np.array([np.cos(yaw), np.sin(yaw)]), np.array([-np.sin(yaw), np.cos(yaw)])
        rel = target[:, :2] - centre
        width, reach = np.ptp(rel @ axis), (np.ptp(rel @ across) / 2 - 0.015)
        for shift in np.linspace(-0.03, 0.03, 5):
            if abs(shift) > max(reach, 0.0):
                continue  # the fingers would miss the object's end
            point = centre + shift * across
            score = (min(clearance(point, axis, others), 0.03) - (10.0 if width > MAX_OPENING else 0.0)
                     - 0.2 * width - 0.1 * abs(shift))
            if score > best_score:
                best, best_score = (float(yaw), point), score
    return best


class ObjectExpert:
    """Pick the goal's object and place it in the basket region; act() gives one action."""

    def __init__(self, env):
        self.env, self.sim = env, env.sim
        goal = env.parsed_problem["goal_state"]
        if len(goal) != 1 or goal[0][0].lower() != "in":
            raise ValueError(f"the LIBERO expert handles one 'In(object, region)' goal, got {goal}")
        _, obj, region = goal[0]
        container = region.removesuffix("_contain_region")
        pts = geom_points(self.sim, env.obj_body_id[obj])
        others = [geom_points(self.sim, env.obj_body_id[o]) for o in env.obj_body_id if o not in (obj, container)]
        basket = geom_points(self.sim, env.obj_body_id[container])
        yaw, centre = choose_grasp(pts, others)
        bottom, top = pts[:, 2].min(), pts[:, 2].max()
        grasp_z = max(bottom + 0.02, top - 0.035)  # fingertips about 3.5 cm below the top
        hang = grasp_z - bottom  # the object hangs this far below the grip point
        carry_z = max(basket[:, 2].max(), max(o[:, 2].max() for o in others) if others else 0) + hang + 0.05
        # the orientation to hold: the current one (pointing down) turned about world z so the
        # fingers close along the chosen axis (the closing axis is symmetric: turn at most 90 deg)
        fingers = [self.sim.data.body_xpos[self.sim.model.body_name2id(f"gripper0_{s}finger")] for s in ("left", "right")]
        now = np.arctan2(*(fingers[0] - fingers[1])[1::-1])
        turn = (yaw - now + np.pi / 2) % np.pi - np.pi / 2
        eef = self.sim.data.site_xmat[env.robots[0].eef_site_id].reshape(3, 3)
        self.target_rot = Rotation.from_rotvec([0, 0, turn]) * Rotation.from_matrix(eef)
        hover = np.r_[centre, top + 0.08]
        grasp = np.r_[centre, grasp_z]
        lift = np.r_[centre, carry_z]
        # LIBERO's In(object, region) holds when the object's body origin lies in the region's
        # box: lower the hand to where the held object's origin reaches the region's centre
        lower = self.sim.data.get_site_xpos(region) - (self.sim.data.body_xpos[env.obj_body_id[obj]] - grasp)
        over = np.r_[lower[:2], carry_z]
        # (name, target position, gripper, done when position error < tol or after `steps` steps)
        self.plan = [("hover", hover, -1, 0.01, 60), ("descend", grasp, -1, 0.006, 40),
                     ("close", grasp, 1, None, CLOSE_STEPS), ("lift", lift, 1, 0.02, 40),
                     ("carry", over, 1, 0.015, 60), ("lower", lower, 1, 0.015, 40),
                     ("open", lower, -1, None, OPEN_STEPS), ("retreat", over, -1, 0.02, 10**6)]
        self.phase, self.phase_steps = 0, 0

    def act(self) -> np.ndarray:
        name, target, gripper, tol, max_steps = self.plan[self.phase]
        eef = self.sim.data.site_xpos[self.env.robots[0].eef_site_id]
        err = target - eef
        cur = Rotation.from_matrix(self.sim.data.site_xmat[self.env.robots[0].eef_site_id].reshape(3, 3))
        rot_err = (self.target_rot * cur.inv()).as_rotvec()
        done = self.phase_steps >= max_steps or (tol is not None and np.linalg.norm(err) < tol
                                                 and np.linalg.norm(rot_err) < 0.08)
        if done and self.phase < len(self.plan) - 1:
            self.phase, self.phase_steps = self.phase + 1, 0
            return self.act()
        self.phase_steps += 1
        action = np.r_[np.clip(err / POS_SCALE, -1, 1), np.clip(rot_err / ROT_SCALE, -1, 1), gripper]
        return action.astype(np.float32)

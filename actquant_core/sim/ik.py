"""Damped-least-squares inverse kinematics of the TCP on the MuJoCo model.

``dq = J^T (J J^T + lambda^2 I)^-1 e`` (Wampler 1986; Buss, "Introduction to inverse kinematics with
Jacobian transpose, pseudoinverse and damped least squares methods", 2004), with
``e = [p* - p ; w * log(R* R^T)]`` [6] and ``J`` [6, 6] the TCP site Jacobian of the arm joints.  It runs
on the world's scratch ``MjData`` so the simulated state is never touched.
"""

from __future__ import annotations

import math

import numpy as np

import mujoco

IK_DAMPING = 0.02  # lambda
IK_ROT_WEIGHT = 0.5  # metres per radian in the error norm
IK_MAX_STEP = 0.2  # rad per iteration


def top_down_rotation(yaw: float) -> np.ndarray:
    """Rotation [3, 3] of a TCP pointing straight down with its finger axis (tool y) at ``yaw`` (rad)."""
    y = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    z = np.array([0.0, 0.0, -1.0])
    x = np.cross(y, z)
    return np.stack([x, y, z], axis=1)


def rotation_error(R_target: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Rotation vector [3] (world frame) that turns ``R`` into ``R_target``."""
    R_err = R_target @ R.T
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, R_err.reshape(-1))
    rv = np.zeros(3)
    mujoco.mju_quat2Vel(rv, quat, 1.0)
    return rv


def solve_ik(world, p_target: np.ndarray, R_target: np.ndarray, q_seed: np.ndarray, iters: int = 30,
             tol: float = 1e-5) -> tuple[np.ndarray, float]:
    """Joint positions that put the TCP at (``p_target`` [3], ``R_target`` [3, 3]).

    Args:
        world: a ``UR3World`` (its model and scratch data are used).
        p_target: TCP position [3] (m, base frame).
        R_target: TCP rotation [3, 3].
        q_seed: starting joint positions [6] (rad).
        iters: maximum iterations.
        tol: stop when the weighted error norm falls below this.
    Returns:
        (q [6], final weighted error norm).
    """
    m = world.model
    d = world._scratch
    site = world._tcp_site
    lower, upper = world._lower, world._upper
    q = np.array(q_seed, dtype=np.float64)
    jacp = np.zeros((3, m.nv))
    jacr = np.zeros((3, m.nv))
    err_norm = float("inf")
    lam2 = IK_DAMPING ** 2
    for _ in range(iters):
        d.qpos[:6] = q
        mujoco.mj_kinematics(m, d)
        p = d.site_xpos[site]
        R = d.site_xmat[site].reshape(3, 3)
        e = np.concatenate([p_target - p, IK_ROT_WEIGHT * rotation_error(R_target, R)])
        err_norm = float(np.linalg.norm(e))
        if err_norm < tol:
            break
        mujoco.mj_comPos(m, d)
        mujoco.mj_jacSite(m, d, jacp, jacr, site)
        J = np.vstack([jacp[:, :6], IK_ROT_WEIGHT * jacr[:, :6]])  # [6, 6]
        dq = J.T @ np.linalg.solve(J @ J.T + lam2 * np.eye(6), e)
        step = np.max(np.abs(dq))
        if step > IK_MAX_STEP:
            dq *= IK_MAX_STEP / step
        q = np.clip(q + dq, lower, upper)
    return q, err_norm

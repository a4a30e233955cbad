"""UR forward kinematics from the standard DH parameters, poses as the controller reports them.

``T_i = Rz(q_i) Tz(d_i) Tx(a_i) Rx(alpha_i)``; the tool pose is the flange frame (TCP offset zero) in the
base frame, written as ``[x, y, z, rx, ry, rz]`` with an axis-angle rotation vector — the format of
``actual_TCP_pose`` and ``getForwardKinematics``.
"""

from __future__ import annotations

import numpy as np

from actquant_core.sim.ursim.config import UrModel


def fk_matrix(model: UrModel, q: np.ndarray) -> np.ndarray:
    """Flange transform in the base frame.

    Args:
        model: the UR model (DH parameters).
        q: joint positions [6] (rad).

    Returns:
        Homogeneous transform [4, 4].
    """
    q = np.asarray(q, dtype=float)
    if q.shape != (6,):
        raise ValueError(f"fk_matrix: q has shape {q.shape}, expected (6,)")
    T = np.eye(4)
    for qi, d, a, alpha in zip(q, model.dh_d, model.dh_a, model.dh_alpha):
        ct, st = np.cos(qi), np.sin(qi)
        ca, sa = np.cos(alpha), np.sin(alpha)
        A = np.array(
            [
                [ct, -st * ca, st * sa, a * ct],
                [st, ct * ca, -ct * sa, a * st],
                [0.0, sa, ca, d],
                [0.0, 0.0, 0.0, 1.0],
            ]
        )
        T = T @ A
    return T


def rotvec_from_matrix(R: np.ndarray) -> np.ndarray:
    """Rotation matrix [3, 3] -> axis-angle rotation vector [3] (angle in [0, pi])."""
    cos_theta = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    theta = float(np.arccos(cos_theta))
    if theta < 1e-9:
        return np.zeros(3)
    if np.pi - theta < 1e-6:
        # Near 180 deg: axis from the diagonal of (R + I) / 2 = n n^T.
        M = (R + np.eye(3)) / 2.0
        k = int(np.argmax(np.diag(M)))
        n = M[:, k] / np.sqrt(max(M[k, k], 1e-12))
        return n / np.linalg.norm(n) * theta
    w = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (2.0 * np.sin(theta))
    return w * theta


def tcp_pose(model: UrModel, q: np.ndarray) -> np.ndarray:
    """Flange pose [6] = [x, y, z, rx, ry, rz] (m, rad axis-angle) for joint positions q [6]."""
    T = fk_matrix(model, q)
    return np.concatenate([T[:3, 3], rotvec_from_matrix(T[:3, :3])])


def tcp_speed(model: UrModel, q: np.ndarray, qd: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Flange twist [6] = [vx, vy, vz, wx, wy, wz] by a finite difference along qd."""
    qd = np.asarray(qd, dtype=float)
    if not np.any(qd):
        return np.zeros(6)
    T0 = fk_matrix(model, q)
    T1 = fk_matrix(model, np.asarray(q, dtype=float) + qd * eps)
    v = (T1[:3, 3] - T0[:3, 3]) / eps
    w = rotvec_from_matrix(T1[:3, :3] @ T0[:3, :3].T) / eps
    return np.concatenate([v, w])

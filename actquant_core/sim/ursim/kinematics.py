"""UR forward kinematics from the standard DH parameters, poses as the controller reports them.

``T_i = Rz(q_i) Tz(d_i) Tx(a_i) Rx(alpha_i)``; the tool pose is the flange frame (TCP offset zero) in the
base frame, written as ``[x, y, z, rx, ry, rz]`` with an axis-angle rotation vector — the format of
``actual_TCP_pose`` and ``getForwardKinematics``.
"""

from __future__ import annotations

import math

import numpy as np

from actquant_core.sim.ursim.config import UrModel


def fk_matrix(model: UrModel, q: np.ndarray) -> np.ndarray:
    """Flange transform in the base frame.

    Plain-float arithmetic on the 3x4 part (this runs every controller cycle; small numpy matrices
    cost ~10x more per product).

    Args:
        model: the UR model (DH parameters).
        q: joint positions [6] (rad).

    Returns:
        Homogeneous transform [4, 4].
    """
    q = np.asarray(q, dtype=float)
    if q.shape != (6,):
        raise ValueError(f"fk_matrix: q has shape {q.shape}, expected (6,)")
    # running transform rows: R (3x3) and p (3)
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0
    px = py = pz = 0.0
    for qi, d, a, alpha in zip(q.tolist(), model.dh_d, model.dh_a, model.dh_alpha):
        ct, st = math.cos(qi), math.sin(qi)
        ca, sa = math.cos(alpha), math.sin(alpha)
        # A = [[ct, -st*ca, st*sa, a*ct], [st, ct*ca, -ct*sa, a*st], [0, sa, ca, d]]
        a00, a01, a02, a03 = ct, -st * ca, st * sa, a * ct
        a10, a11, a12, a13 = st, ct * ca, -ct * sa, a * st
        a21, a22, a23 = sa, ca, d
        px, py, pz = (
            px + r00 * a03 + r01 * a13 + r02 * a23,
            py + r10 * a03 + r11 * a13 + r12 * a23,
            pz + r20 * a03 + r21 * a13 + r22 * a23,
        )
        r00, r01, r02 = r00 * a00 + r01 * a10, r00 * a01 + r01 * a11 + r02 * a21, r00 * a02 + r01 * a12 + r02 * a22
        r10, r11, r12 = r10 * a00 + r11 * a10, r10 * a01 + r11 * a11 + r12 * a21, r10 * a02 + r11 * a12 + r12 * a22
        r20, r21, r22 = r20 * a00 + r21 * a10, r20 * a01 + r21 * a11 + r22 * a21, r20 * a02 + r21 * a12 + r22 * a22
    return np.array([[r00, r01, r02, px], [r10, r11, r12, py], [r20, r21, r22, pz], [0.0, 0.0, 0.0, 1.0]])


def _fk_matrix_reference(model: UrModel, q: np.ndarray) -> np.ndarray:
    """Straightforward product of the DH matrices (used to check ``fk_matrix``)."""
    T = np.eye(4)
    for qi, d, a, alpha in zip(np.asarray(q, dtype=float), model.dh_d, model.dh_a, model.dh_alpha):
        ct, st, ca, sa = np.cos(qi), np.sin(qi), np.cos(alpha), np.sin(alpha)
        T = T @ np.array([[ct, -st * ca, st * sa, a * ct], [st, ct * ca, -ct * sa, a * st],
                          [0.0, sa, ca, d], [0.0, 0.0, 0.0, 1.0]])
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

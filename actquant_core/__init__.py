"""actquant_core — framework-free core of actquant_ros.

Policies (PyTorch references), the ActQuant quantizer, the GGUF layer, the native runtime facade,
the robot side (safety, chunk scheduling, RTDE) and the MuJoCo simulation.  Nothing here imports
ROS (rclpy / cyclonedds); the ROS glue lives in ``actquant_ros``.  The compiled GGML module
``actquant_core._native`` is loaded lazily through ``actquant_core.native``.
"""

__version__ = "0.1.0"

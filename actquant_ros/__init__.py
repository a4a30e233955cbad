"""actquant_ros — ROS 2 glue (nodes, transport facade) over actquant_core.

Modules:
  - ``msgs``: ROS 2 standard message types as Cyclone DDS IdlStructs (same CDR bytes as ROS 2).
  - ``cdr_codec``: block-copy CDR codecs for Image, CompressedImage, JointState, JointTrajectory.
  - ``convert``: numpy <-> message converters.
  - ``transport``: the node facade (``make_node``) with rclpy and Cyclone DDS backends.
  - ``echo_node``: a minimal example node on the facade.
"""

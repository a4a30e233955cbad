"""Recorded data: rosbag2 reading/writing as numpy (``rosbag_io``).  No ROS runtime imports."""

from actquant_core.data.rosbag_io import (
    KIND_ACTION_CHUNK,
    KIND_IMAGE,
    KIND_INSTRUCTION,
    KIND_JOINT_STATE,
    BagMessage,
    BagWriter,
    ChunkSample,
    ImageFields,
    JointSample,
    TopicMap,
    bag_topics,
    image_to_rgb,
    iter_bag_raw,
    read_bag,
    rgb_to_image_fields,
)

__all__ = [
    "KIND_ACTION_CHUNK",
    "KIND_IMAGE",
    "KIND_INSTRUCTION",
    "KIND_JOINT_STATE",
    "BagMessage",
    "BagWriter",
    "ChunkSample",
    "ImageFields",
    "JointSample",
    "TopicMap",
    "bag_topics",
    "image_to_rgb",
    "iter_bag_raw",
    "read_bag",
    "rgb_to_image_fields",
]

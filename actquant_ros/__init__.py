"""actquant_ros — ROS 2 glue (nodes, transport facade) over actquant_core."""

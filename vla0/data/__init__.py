"""LeRobotDataset reading/writing and video encoding."""

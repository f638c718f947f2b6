"""Line-by-line language models: every line one example, optionally conditioned on a label."""

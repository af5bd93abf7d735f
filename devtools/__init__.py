"""What runs RunPod and ComfyUI on one machine for development: the endpoint, the stand-in."""

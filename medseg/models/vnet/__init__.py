"""V-Net family."""

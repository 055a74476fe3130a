"""Training the FCOS detector on generated video frames (SynthVID)."""

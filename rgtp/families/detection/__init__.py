"""The detection family: a ViTDet backbone, a simple feature pyramid and an FCOS head
(`family.DETECTION`)."""

"""The classification family: the ViViT factorised encoder (`family.CLASSIFICATION`)."""

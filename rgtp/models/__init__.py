"""What every family's network is built from: the ViT blocks and their operations
(`vitdet`, `vit_ops`), the pruned computation of a stage (`stages`), the shared config parts
(`config`: encoder geometry, pruning settings) and checkpoint files (`checkpoint_files`)."""

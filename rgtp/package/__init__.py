"""The package format: the stage plan and its graph interfaces (`plan`), the manifest and its
JSON schema (`manifest`), verification of a package on disk (`verify`), and the interface a
model family implements to be packaged and run (`family`). Nothing here names a family."""

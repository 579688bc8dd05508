"""unixkd: computation-efficient knowledge distillation (UNIX, TL-augmentation) with DALI, CUDA graphs and Accelerate.

This folder is the package: `pip install -e .` installs it under the one name `unixkd` (`unixkd.pipeline`,
`unixkd.selection`, `unixkd.training`, `unixkd.launch`), and the code imports its parts by those names. Nothing is
imported here, so `import unixkd.selection` does not pull in DALI or the trainer.
"""

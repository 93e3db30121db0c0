"""Checkpoints of other stacks <-> ours (LeRobot's pi0, pi0.5 and SmolVLA: ``vla.interop.lerobot``)."""

"""Scripted demonstration generators, written as LeRobot v3 datasets (one module per simulator)."""

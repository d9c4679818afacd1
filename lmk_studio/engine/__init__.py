"""Torch engine, free of Qt: Stage I (EGT), Stage II (C2T), inference, confidence, devices."""

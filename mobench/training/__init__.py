"""Shared trainers over trl: DPO experts, margin-DPO, RL with weighted rewards."""

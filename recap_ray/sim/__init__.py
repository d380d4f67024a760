"""A small numpy simulation of a YAM-like bimanual handover task, for tests, demos and evaluation.

`world` (config and physics), `kinematics`, `render` (the three cameras), `env` (episodes and the
openpi observation), `scripted` (expert and degraded controllers), `session` (demonstrations and
DAgger rollouts), `policies` (local policies with the served interface), `evaluation`, `recording`.
"""

"""fleetstage operator side: the CLI, the rollout orchestrator, keys, the Pi installer."""

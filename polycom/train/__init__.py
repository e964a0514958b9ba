"""Training: schema, Accelerate loop, optimizer, schedules, checkpoints, metrics and logging."""

"""The training loop's components, each a small part with one job (torchtitan's `components/`): the run's data and
batch stream, LR schedule and alignment phase, checkpoints, RNG states, stopping, process groups, machine checks."""

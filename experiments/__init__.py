"""Research probes and the learning benches' orchestration: the learning demo (a world, SFT, GRPO,
held-out evaluation), the copying warm-up, renamed worlds, gradient agreement. They build on the
environments and the trainer; the app and the benchmarks run them."""

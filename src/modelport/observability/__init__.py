"""What an operator watches: Prometheus metrics over the core's counters, and GPUs through NVML."""

"""What every layer uses: checkpointing (orbax, damaged-step quarantine, preemption) and its one-line errors
(orbax_noise), the workdir and its lock, memory (allocator, peak RSS), progress lines, ConfigError (errors)."""

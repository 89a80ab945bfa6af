"""The command line and the process: `--config` resolution and `--help` (cli), allocator re-exec, logging,
distributed start-up and exception -> one line + exit code (process), the serving commands' exit codes
(serving_cli). Used only by the entry modules at the package's top."""
